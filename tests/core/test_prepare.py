"""prepare_dataset: filtering with reasons, layout, label quality, safe output handling."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pbf_core.config import PrepareConfig
from pbf_core.data.dataset import load_manifest, load_sample, open_dataset
from pbf_core.data.prepare import prepare_dataset
from pbf_core.errors import DatasetError


def _noise_kinds(build) -> dict[str, str]:
    manifest = json.loads((build / "manifest.json").read_text())
    return {layer["id"]: layer["kind"] for layer in manifest["layers"] if layer["kind"] != "layer"}


def test_prepared_layout_and_report(synthetic_build, prepared_synthetic):
    manifest = load_manifest(prepared_synthetic)
    report = json.loads((prepared_synthetic / "report.json").read_text())
    noise = _noise_kinds(synthetic_build)
    assert noise, "the tiny build must contain noise frames"
    assert report["counts"]["kept"] == len(manifest.layers) == 12
    assert report["counts"]["dropped"] == len(noise)
    assert {d["id"] for d in report["dropped"]} == set(noise)
    assert all(d["reason"] for d in report["dropped"])
    assert manifest.views == ("a", "b", "c") and manifest.format == "synthetic"
    sample = load_sample(prepared_synthetic, manifest.layers[0])
    assert sample.image.shape == (3, 96, 96) and sample.image.dtype == np.float32
    assert sample.truth is not None and sample.types is not None
    assert manifest.layers[0].bed == (0, 96, 0, 96) and sample.bed.all()  # no frame: all bed
    assert ((sample.types > 0) == sample.truth).all()
    quality = report["label_quality"]
    assert set(quality) == {"threshold", "background", "adaptive"}
    for q in quality.values():
        assert 0.0 <= q["iou"] <= 1.0 and 0.0 <= q["instance_recall"] <= 1.0


def test_raw_data_is_never_modified(synthetic_build, prepared_synthetic):
    # prepared_synthetic ran on synthetic_build; nothing was added next to the raw files
    names = {p.name for p in synthetic_build.iterdir()}
    assert names <= {"images", "truth", "types", "manifest.json"}


def test_refuses_foreign_nonempty_output(synthetic_build, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty"):
        prepare_dataset(synthetic_build, out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_refuses_output_inside_raw(synthetic_build):
    with pytest.raises(DatasetError, match="inside the raw data"):
        prepare_dataset(synthetic_build, synthetic_build / "prepared")


def test_failed_rerun_keeps_previous_dataset(synthetic_build, prepared_synthetic, tmp_path):
    out = tmp_path / "prep"
    shutil.copytree(prepared_synthetic, out)
    before = (out / "manifest.json").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError):
        prepare_dataset(empty, out)
    assert (out / "manifest.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prep.")]


def test_rerun_replaces_previous_dataset(synthetic_build, tmp_path):
    out = tmp_path / "prep"
    cfg = PrepareConfig()
    prepare_dataset(synthetic_build, out, cfg)
    (out / "stale.png").write_bytes(b"x")
    calls = []
    dataset = prepare_dataset(
        synthetic_build,
        out,
        cfg.model_copy(update={"labels": cfg.labels.model_copy(update={"method": "threshold"})}),
        progress=lambda done, total: calls.append((done, total)),
    )
    report = dataset.report
    assert dataset.path == out and dataset.layers == len(load_manifest(out).layers)
    assert dataset == open_dataset(out, name=dataset.name)  # same digest, views, layer count
    assert report["label_method"] == "threshold"
    assert load_manifest(out).label_method == "threshold"
    assert not (out / "stale.png").exists()
    assert calls[-1][0] == calls[-1][1] == report["counts"]["found"]


def test_am04_real_data_has_truth_and_quality(am04, tmp_path):
    report = prepare_dataset(am04, tmp_path / "am04").report
    assert report["format"] == "am04"
    assert report["counts"]["kept"] == 54 and report["counts"]["with_truth"] == 54
    assert report["label_quality"]["background"]["layers"] == 54
    # the bed is found on the stored pictures: the machinery above and below it is left out
    # (at least 48 rows each: 68-160 above, 50-136 below), the annotated defects all lie inside
    manifest = load_manifest(tmp_path / "am04")
    boxes = np.array([e.bed for e in manifest.layers])
    heights = np.array([e.height for e in manifest.layers])
    assert (boxes[:, 0] >= 48).all() and (heights - boxes[:, 1] >= 48).all()
    for entry in manifest.layers[:: len(manifest.layers) // 6]:
        sample = load_sample(tmp_path / "am04", entry)
        assert sample.bed is not None and not (sample.truth & ~sample.bed).any()
        assert not (sample.weak & ~sample.bed).any()
