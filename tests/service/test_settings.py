"""``PBF_SERVE_*`` settings: defaults, the environment, and the values derived from them."""

from __future__ import annotations

import os

import pytest

from pbf_core.serving.settings import ServeSettings


@pytest.fixture(autouse=True)
def _no_serve_env(monkeypatch):
    for name in [k for k in os.environ if k.startswith("PBF_SERVE_")]:
        monkeypatch.delenv(name)


def test_defaults():
    s = ServeSettings()
    assert (s.variant, s.source, s.runtime, s.batching) == ("int8", "store", "auto", False)
    assert (s.model, s.alias) == ("pbf-defect-segmenter:latest", "champion")
    assert (s.max_upload_mb, s.max_pixels, s.heap_keep_mb) == (48.0, 4096 * 4096, 256)
    assert (s.max_aspect, s.max_active, s.max_queued, s.body_timeout_s) == (16.0, 2, 16, 60.0)
    assert s.api_key is None and s.api_key_value is None
    assert (s.workers, s.inference_workers, s.threads, s.tiles_per_call) == (0, 0, 1, 0)
    assert (s.max_batch_tiles, s.max_latency_ms) == (32, 60_000)


def test_environment_sets_fields(monkeypatch):
    monkeypatch.setenv("PBF_SERVE_VARIANT", "fp32")
    monkeypatch.setenv("PBF_SERVE_BATCHING", "true")
    monkeypatch.setenv("PBF_SERVE_MAX_UPLOAD_MB", "1")
    s = ServeSettings()
    assert (s.variant, s.batching, s.max_upload_bytes) == ("fp32", True, 1024**2)


@pytest.mark.parametrize(
    ("fields", "tiles"),
    [({}, 3), ({"batching": True}, 16), ({"tiles_per_call": 5}, 5)],
)
def test_tiles_per_inference(fields, tiles):
    """3 tiles per call in process, 16 to the batching service, unless set."""
    assert ServeSettings(**fields).tiles_per_inference == tiles


@pytest.mark.parametrize(("variant", "alias"), [("int8", "best"), ("fp32", "best-fp32")])
def test_registry_alias_of_the_variant(variant, alias):
    assert ServeSettings(variant=variant, alias="best").registry_alias == alias


def test_max_body_fits_a_triplet_and_its_form():
    s = ServeSettings(max_upload_mb=2)
    assert s.max_body_bytes == 3 * 2 * 1024**2 + 1024**2


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_ACTIVE", "0"), ("MAX_QUEUED", "-1"), ("MAX_ASPECT", "0.5"), ("BODY_TIMEOUT_S", "0")],
)
def test_bad_values_are_refused_naming_the_setting(monkeypatch, name, value):
    from pydantic import ValidationError

    monkeypatch.setenv(f"PBF_SERVE_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        ServeSettings()


def test_the_api_key_is_kept_out_of_reprs(monkeypatch):
    monkeypatch.setenv("PBF_SERVE_API_KEY", "s3cret-key")
    s = ServeSettings()
    assert s.api_key_value == "s3cret-key"
    assert "s3cret-key" not in repr(s) and "s3cret-key" not in str(s.model_dump())
