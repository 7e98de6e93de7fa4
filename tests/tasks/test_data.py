"""Data tasks called directly (``.fn``): digests that key the cache, the mapped layers, the
dataset they make, the split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pbf_core.config import PrepareConfig, TrainConfig
from pbf_core.data.dataset import load_manifest
from pbf_core.data.prepare import prepared_dir
from pbf_core.errors import DatasetError
from tasks import data


@pytest.fixture(scope="module")
def build_copy(synthetic_build, tmp_path_factory) -> Path:
    """A private copy of the tiny build (the shared one is read-only)."""
    out = tmp_path_factory.mktemp("raw") / "build"
    shutil.copytree(synthetic_build, out)
    return out


@pytest.fixture(scope="module")
def prepared(build_copy, tmp_path_factory):
    found = data.discover_layers.fn(str(build_copy), str(tmp_path_factory.mktemp("staging")))
    out = tmp_path_factory.mktemp("prepared") / "ds"
    cfg = PrepareConfig()
    outcomes = [
        data.prepare_layer.fn(r, d, str(out), cfg)
        for r, d in zip(found.source.records, found.digests, strict=True)
    ]
    return data.write_dataset.fn("tiny", found, outcomes, str(out), cfg, 0.0)


def test_raw_digest_changes_with_one_byte_and_only_that_layer(build_copy, tmp_path):
    found = data.discover_layers.fn(str(build_copy), str(tmp_path))
    again = data.discover_layers.fn(str(build_copy), str(tmp_path))
    assert found.digest == again.digest and found.digests == again.digests
    copy = tmp_path / "changed"
    shutil.copytree(build_copy, copy)
    record = found.source.records[0]
    view = Path(record.views["a"])
    target = copy / view.relative_to(build_copy)
    blob = bytearray(target.read_bytes())
    blob[-20] ^= 0xFF
    target.write_bytes(bytes(blob))
    changed = data.discover_layers.fn(str(copy), str(tmp_path))
    assert changed.digest != found.digest
    assert changed.digests[0] != found.digests[0]
    assert changed.digests[1:] == found.digests[1:]


def test_prepared_dir_is_keyed_by_data_config_and_code(tmp_path, monkeypatch):
    a = prepared_dir(tmp_path, "x", "d1", PrepareConfig())
    assert a == prepared_dir(tmp_path, "x", "d1", PrepareConfig())
    assert a != prepared_dir(tmp_path, "x", "d2", PrepareConfig())
    assert a != prepared_dir(tmp_path, "x", "d1", PrepareConfig(normalization="minmax"))
    assert a.name.startswith("x-")
    monkeypatch.setattr("pbf_core.data.prepare.preparation_code", lambda: "other code")
    assert a != prepared_dir(tmp_path, "x", "d1", PrepareConfig())


def test_written_dataset_is_loadable_and_digested(prepared):
    manifest = load_manifest(prepared.path)
    assert prepared.layers == len(manifest.layers) > 0
    assert prepared.channels == 3 and len(prepared.digest) == 64
    assert prepared.raw_digest and prepared.split is None
    assert prepared.report["counts"]["dropped"] > 0  # the tiny build has noise frames


def test_split_is_deterministic_and_keys_the_evaluation_set(prepared):
    a = data.split_dataset.fn(prepared, TrainConfig()).split
    b = data.split_dataset.fn(prepared, TrainConfig()).split
    assert a == b
    assert a.eval_ids == (a.test or a.val)
    assert not set(a.eval_ids) & set(a.train)
    other = data.split_dataset.fn(prepared, TrainConfig(seed=1)).split
    assert other.eval_digest != a.eval_digest or other.eval_ids == a.eval_ids


def test_no_usable_layer_is_a_dataset_error(build_copy, tmp_path):
    found = data.discover_layers.fn(str(build_copy), str(tmp_path))
    with pytest.raises(DatasetError, match="no usable layer"):
        data.write_dataset.fn("tiny", found, [], str(tmp_path / "out"), PrepareConfig(), 0.0)


def test_missing_raw_data_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        data.discover_layers.fn(str(tmp_path / "nowhere"), str(tmp_path))
