"""Shared test data: a tiny synthetic build made once per session, and the real sets in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.docker_engine import docker_engine

from pbf_core.config import PrepareConfig, SynthConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AM04 = SHARED / "data" / "real" / "am04"
SUPERAMS = SHARED / "data" / "real" / "superams"

TINY_BUILD = SynthConfig(layers=12, size=96, seed=7, noise_frames=0.35)


@pytest.fixture(scope="session")
def synthetic_build(tmp_path_factory) -> Path:
    """A 12-layer 96 px synthetic build with every kind of noise frame (read-only: do not modify)."""
    from pbf_core.data.synthetic import generate_build

    out = tmp_path_factory.mktemp("build") / "raw"
    generate_build(out, TINY_BUILD)
    return out


@pytest.fixture(scope="session")
def prepared_synthetic(synthetic_build, tmp_path_factory) -> Path:
    """The tiny build prepared with the default config (read-only: do not modify)."""
    from pbf_core.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare_dataset(synthetic_build, out, PrepareConfig())
    return out


@pytest.fixture(scope="session")
def am04() -> Path:
    if not AM04.is_dir():
        pytest.skip(f"real data not present at {AM04}")
    return AM04


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """A small untrained network (seed 0) at a low threshold: it marks something on every layer,
    so build scoring has components to join (the numbers mean nothing)."""
    import torch

    from pbf_core.model.checkpoints import save_checkpoint
    from pbf_core.model.factory import model_from_spec
    from pbf_core.model.spec import ModelSpec

    spec = ModelSpec(decoder_channels=(16, 16, 8, 8, 8), head_width=8, tile_size=64,
                     tile_overlap=8, threshold=0.3)  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("untrained") / "model.safetensors"
    return save_checkpoint(out, model_from_spec(spec), spec)


@pytest.fixture(scope="session")
def docker() -> dict[str, str]:
    """Environment reaching a Docker engine (``DOCKER``: the client); one started here if none
    answers (stopped at the end), else the test is skipped (failed under CI=true)."""
    with docker_engine() as env:
        yield env
