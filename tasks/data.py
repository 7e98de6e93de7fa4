"""Data tasks: synthetic build, ingest, per-layer preparation (mapped, cached), summary, split.

Caching: a layer's preparation is keyed by the bytes of its raw files, the prepare config and
the output directory, and its result is persisted, so a re-run on unchanged data skips it. The
prepared dataset directory itself is named by the digest of the raw data and the config, so
changed data or settings never mix with an earlier preparation.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from pbf_core.config import PrepareConfig, SynthConfig, TrainConfig
from pbf_core.data.dataset import load_manifest
from pbf_core.data.layers import LayerRecord, RawSource
from pbf_core.data.prepare import LayerOutcome, prepare_layer, summarize
from pbf_core.errors import DatasetError
from pbf_core.files import write_json


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record_digest(record: LayerRecord) -> str:
    """Digest of everything a layer's preparation reads: its views, truth and instance masks."""
    h = hashlib.sha256(record.layer_id.encode())
    files = [(f"view:{k}", p) for k, p in sorted(record.views.items())]
    files += [("truth", record.truth), *((f"instance:{k}", p) for k, p in record.instances)]
    for name, path in files:
        h.update(f"{name}={file_digest(path) if path else '-'};".encode())
    h.update(f"no_defects={record.no_defects}".encode())
    return h.hexdigest()


def _synth_key(_: TaskRunContext, params: dict[str, Any]) -> str:
    cfg: SynthConfig = params["cfg"]
    return hashlib.sha256(f"synth:{cfg.model_dump_json()}:{params['out']}".encode()).hexdigest()


@task(name="synthesize-build", cache_key_fn=_synth_key, persist_result=True, retries=1)
def synthesize(cfg: SynthConfig, out: str) -> str:
    """Generate the synthetic build (skipped when the same config already wrote ``out``)."""
    from pbf_core.data.synthetic import generate_build

    generate_build(out, cfg)
    return out


@task(name="discover-layers", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def discover_layers(raw: str, staging: str) -> dict:
    """List the raw layer sets and digest them (the data version the whole run is keyed by).

    Returns:
        ``{"source": RawSource, "digests": [per record], "digest": raw data digest}``.
    """
    from pbf_core.data.ingest import discover

    source = discover(raw, staging_dir=staging)
    digests = [record_digest(r) for r in source.records]
    total = hashlib.sha256(f"{source.format};{';'.join(digests)}".encode()).hexdigest()
    return {"source": source, "digests": digests, "digest": total}


def _layer_key(_: TaskRunContext, params: dict[str, Any]) -> str:
    cfg: PrepareConfig = params["cfg"]
    text = f"layer:{params['digest']}:{cfg.model_dump_json()}:{params['out']}"
    return hashlib.sha256(text.encode()).hexdigest()


@task(name="prepare-layer", cache_key_fn=_layer_key, persist_result=True, retries=1)
def prepare_one(record: LayerRecord, digest: str, out: str, cfg: PrepareConfig) -> LayerOutcome:
    """Filter, normalise and label one layer (``digest``: its raw files' digest, the cache key)."""
    return prepare_layer(record, Path(out), cfg)


def prepared_dir(root: Path, name: str, raw_digest: str, cfg: PrepareConfig) -> Path:
    """Where the dataset prepared from these raw bytes with this config lives."""
    key = hashlib.sha256(f"{raw_digest}:{cfg.model_dump_json()}".encode()).hexdigest()
    return root / f"{name}-{key[:12]}"


def is_prepared(out: Path) -> bool:
    return (out / "manifest.json").is_file()


@task(name="summarize-dataset", cache_policy=NO_CACHE)
def summarize_dataset(
    name: str,
    discovered: dict,
    outcomes: list[LayerOutcome],
    out: str,
    cfg: PrepareConfig,
    started: float,
) -> dict:
    """Write the manifest and report of the mapped layers; digest the prepared dataset.

    Returns:
        ``{"name", "path", "digest", "raw_digest", "channels", "layers", "report"}``.

    Raises:
        DatasetError: no usable layer.
    """
    from pbf_core.data.dataset import data_digest

    source: RawSource = discovered["source"]
    manifest, report = summarize(source, outcomes, cfg, time.time() - started)
    if not manifest.layers:
        raise DatasetError(source.root, f"no usable layer: {report['dropped_by_reason']}")
    root = Path(out)
    write_json(root / "report.json", report)
    write_json(root / "manifest.json", manifest.model_dump(mode="json"))
    return {
        "name": name,
        "path": str(root),
        "digest": data_digest(root, manifest.layers),
        "raw_digest": discovered["digest"],
        "channels": manifest.channels,
        "layers": len(manifest.layers),
        "report": report,
    }


@task(name="split-dataset", cache_policy=NO_CACHE)
def split_dataset(dataset: dict, cfg: TrainConfig) -> dict:
    """Train/val/test layer ids as training will draw them, and the frozen evaluation set.

    The evaluation set is the test split (the validation split when there is no test split),
    identified by the digest of its layers' bytes: the promotion gate compares models only on
    the same digest.

    Returns:
        ``{"split": {"train", "val", "test"}, "eval_ids": [...], "eval_digest": str}``.
    """
    from pbf_core.data.dataset import data_digest
    from pbf_core.data.split import split_layers

    root = Path(dataset["path"])
    entries = list(load_manifest(root).layers)
    if cfg.labels == "truth":
        entries = [e for e in entries if e.truth]
    split = split_layers([e.id for e in entries], cfg.split, cfg.seed)
    eval_ids = split["test"] or split["val"]
    by_id = {e.id: e for e in entries}
    return {
        "split": split,
        "eval_ids": eval_ids,
        "eval_digest": data_digest(root, [by_id[i] for i in eval_ids]),
    }
