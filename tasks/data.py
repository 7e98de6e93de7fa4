"""Data tasks: the synthetic build, ingest, per-layer preparation (mapped, cached), the dataset,
the split. Each calls one step of :mod:`pbf_core.steps`.

Caching: a layer's preparation is keyed by the bytes of its raw files, the prepare config, the
output directory and the digest of the preparation code, and its result is persisted, so a re-run
on unchanged data and code skips it while a change to, say, the labelling code prepares it again.
The synthetic build is keyed by its config and the generator's code the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

import pbf_core.data.synthetic
from pbf_core import steps
from pbf_core.config import PrepareConfig, SynthConfig, TrainConfig
from pbf_core.data.layers import LayerRecord
from pbf_core.data.prepare import preparation_code
from pbf_core.files import source_digest


def _key(*parts: object) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


def _synth_key(_: TaskRunContext, params: dict[str, Any]) -> str:
    code = source_digest([pbf_core.data.synthetic])
    return _key("synth", params["cfg"].model_dump_json(), params["out"], code)


@task(name="synthesize-build", cache_key_fn=_synth_key, persist_result=True, retries=1)
def synthesize(cfg: SynthConfig, out: str) -> str:
    """Generate the synthetic build (skipped when the same config and code already wrote ``out``)."""
    steps.generate_build(out, cfg)
    return out


@task(name="discover-layers", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def discover_layers(raw: str, staging: str) -> steps.DiscoveredLayers:
    """List the raw layer sets and digest them (the data version the whole run is keyed by)."""
    return steps.discover_layers(raw, staging)


def _layer_key(_: TaskRunContext, params: dict[str, Any]) -> str:
    cfg: PrepareConfig = params["cfg"]
    return _key("layer", params["digest"], cfg.model_dump_json(), params["out"], preparation_code())


@task(name="prepare-layer", cache_key_fn=_layer_key, persist_result=True, retries=1)
def prepare_layer(
    record: LayerRecord, digest: str, out: str, cfg: PrepareConfig
) -> steps.LayerOutcome:
    """Filter, normalise and label one layer (``digest``: its raw files' digest, the cache key)."""
    return steps.prepare_layer(record, Path(out), cfg)


@task(name="write-dataset", cache_policy=NO_CACHE)
def write_dataset(
    name: str,
    found: steps.DiscoveredLayers,
    outcomes: list[steps.LayerOutcome],
    out: str,
    cfg: PrepareConfig,
    elapsed_s: float,
) -> steps.PreparedDataset:
    """The manifest and report of the mapped layers → the prepared dataset."""
    return steps.write_dataset(name, found, outcomes, out, cfg, elapsed_s)


@task(name="split-dataset", cache_policy=NO_CACHE)
def split_dataset(dataset: steps.PreparedDataset, cfg: TrainConfig) -> steps.PreparedDataset:
    """The split every later step uses: train/val/test and the frozen evaluation set."""
    return steps.split_dataset(dataset, cfg)
