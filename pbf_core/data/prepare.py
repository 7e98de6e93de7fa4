"""Raw layers → prepared dataset: ingest, filter, normalise, weak labels, label quality.

The steps, each a plain function both the CLI and the Prefect flow call:

1. :func:`discover_layers`: recognise the raw layout and digest every layer's files;
2. :func:`prepare_layer`: filter, normalise and label one layer (pure in its record, so an
   orchestrator maps it over a task runner and caches it by the layer's digest);
3. :func:`write_dataset`: the manifest and report of the kept layers → :class:`PreparedDataset`.

:func:`prepare_dataset` (``pbf prepare``) runs the three in order into a temporary directory
and swaps the result into place.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pbf_core.config import PrepareConfig
from pbf_core.data.dataset import LayerEntry, Manifest, PreparedDataset, data_digest
from pbf_core.data.filtering import FrameRejected, load_layer_set
from pbf_core.data.imaging import box_mask, write_mask, write_png16, write_raw_png
from pbf_core.data.ingest import discover
from pbf_core.data.labels import METHODS, synthesize_labels
from pbf_core.data.layers import LayerRecord, RawSource
from pbf_core.errors import DatasetError
from pbf_core.evaluation.metrics import instance_counts, instance_metrics
from pbf_core.files import file_digest, source_digest, write_json

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LayerOutcome:
    """What happened to one raw layer: kept (``entry``) or dropped (``code`` and ``reason``).

    ``quality`` holds per-method label-quality counts when the layer has a true mask.
    """

    layer_id: str
    entry: LayerEntry | None = None
    code: str | None = None
    reason: str | None = None
    quality: dict[str, dict] | None = None


def prepare_layer(record: LayerRecord, out: Path, cfg: PrepareConfig) -> LayerOutcome:
    """Filter, normalise and label one layer set; write its files under ``out``.

    Returns the outcome instead of raising for unusable frames, so one bad file never stops a run.
    """
    try:
        layer = load_layer_set(record, cfg)
    except FrameRejected as exc:
        return LayerOutcome(record.layer_id, code=exc.code, reason=exc.reason)
    lid = layer.layer_id
    box = layer.box
    bed = box_mask(layer.image.shape[1:], box)
    weak = synthesize_labels(layer.image, cfg.labels, bed)
    write_png16(out / "images" / f"{lid}.png", layer.image)
    write_mask(out / "weak" / f"{lid}.png", weak)
    truth_rel = types_rel = None
    quality = None
    if layer.truth is not None:
        truth_rel = f"truth/{lid}.png"
        write_mask(out / truth_rel, layer.truth)
        quality = {}
        for method in METHODS:
            pred = (
                weak if method == cfg.labels.method else _labels_by(method, layer.image, bed, cfg)
            )
            quality[method] = instance_counts(pred, layer.truth)
    if layer.types is not None:
        types_rel = f"types/{lid}.png"
        write_raw_png(out / types_rel, layer.types)
    _, h, w = layer.image.shape
    entry = LayerEntry(
        id=lid,
        image=f"images/{lid}.png",
        weak=f"weak/{lid}.png",
        truth=truth_rel,
        types=types_rel,
        height=h,
        width=w,
        bed=box,
    )
    return LayerOutcome(lid, entry=entry, quality=quality)


def _labels_by(method: str, image, bed, cfg: PrepareConfig):
    return synthesize_labels(image, cfg.labels.model_copy(update={"method": method}), bed)


def summarize(
    source: RawSource,
    outcomes: Sequence[LayerOutcome],
    cfg: PrepareConfig,
    elapsed_s: float,
    source_name: str | None = None,
) -> tuple[Manifest, dict]:
    """Build the manifest and the report from per-layer outcomes (pure).

    ``source_name`` is what the user gave (e.g. the ``.zip``), when ``source.root`` is a staging copy.
    """
    name = source_name or str(source.root)
    kept = [o for o in outcomes if o.entry is not None]
    dropped = [o for o in outcomes if o.entry is None]
    views = tuple(sorted({v for r in source.records for v in r.views}))
    manifest = Manifest(
        source=name,
        format=source.format,
        views=views,
        label_method=cfg.labels.method,
        normalization=cfg.normalization,
        layers=tuple(o.entry for o in kept if o.entry is not None),
    )
    with_truth = [o for o in kept if o.quality]
    quality = (
        {m: instance_metrics(o.quality[m] for o in with_truth) for m in METHODS}
        if with_truth
        else None
    )
    report = {
        "source": name,
        "format": source.format,
        "label_method": cfg.labels.method,
        "counts": {
            "found": len(outcomes),
            "kept": len(kept),
            "dropped": len(dropped),
            "unmatched_files": len(source.unmatched),
            "with_truth": len(with_truth),
        },
        "dropped_by_reason": dict(sorted(Counter(o.code for o in dropped).items())),
        "dropped": [{"id": o.layer_id, "code": o.code, "reason": o.reason} for o in dropped],
        "unmatched": [{"file": f, "reason": r} for f, r in source.unmatched],
        "label_quality": quality,
        "config": cfg.model_dump(mode="json"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed_s, 2),
    }
    return manifest, report


def _check_output(raw: Path, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DatasetError(out, "output exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise DatasetError(
            out,
            "output directory is not empty and is not a prepared dataset; refusing to overwrite",
        )
    raw_r, out_r = raw.resolve(), out.resolve()
    if raw_r == out_r or raw_r in out_r.parents or out_r in raw_r.parents:
        raise DatasetError(out, f"output must not contain or be inside the raw data {raw}")


@dataclass(frozen=True)
class DiscoveredLayers:
    """The raw layer sets found in a source, and the digests a run is keyed by.

    Attributes:
        source: the recognised layout and its records.
        given: what the user named (a directory or ``.zip``), for the report.
        digests: SHA-256 of each record's files (views, truth, instance masks), in record order.
        digest: SHA-256 of the whole raw data (format and every record digest).
    """

    source: RawSource
    given: str
    digests: tuple[str, ...]
    digest: str


def record_digest(record: LayerRecord) -> str:
    """Digest of everything a layer's preparation reads: its views, truth and instance masks."""
    h = hashlib.sha256(record.layer_id.encode())
    files = [(f"view:{k}", p) for k, p in sorted(record.views.items())]
    files += [("truth", record.truth), *((f"instance:{k}", p) for k, p in record.instances)]
    for name, path in files:
        h.update(f"{name}={file_digest(path) if path else '-'};".encode())
    h.update(f"no_defects={record.no_defects}".encode())
    return h.hexdigest()


def discover_layers(raw: str | Path, staging: str | Path | None = None) -> DiscoveredLayers:
    """Recognise the raw layout of ``raw`` and digest its layers (zip archives go to ``staging``).

    Raises:
        DatasetError: missing or unrecognised raw data.
    """
    source = discover(raw, staging_dir=staging)
    digests = tuple(record_digest(r) for r in source.records)
    total = hashlib.sha256(f"{source.format};{';'.join(digests)}".encode()).hexdigest()
    return DiscoveredLayers(source, str(raw), digests, total)


@functools.cache
def preparation_code() -> str:
    """Digest of the code that prepares layers: part of every preparation cache key."""
    import pbf_core.config.data
    import pbf_core.data
    import pbf_core.evaluation.metrics

    return source_digest([pbf_core.data, pbf_core.evaluation.metrics, pbf_core.config.data])


def prepared_dir(root: str | Path, name: str, raw_digest: str, cfg: PrepareConfig) -> Path:
    """Where the dataset prepared from these raw bytes, with this config and code, lives."""
    key = f"{raw_digest}:{cfg.model_dump_json()}:{preparation_code()}"
    return Path(root) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def write_dataset(
    name: str,
    found: DiscoveredLayers,
    outcomes: Sequence[LayerOutcome],
    out: str | Path,
    cfg: PrepareConfig,
    elapsed_s: float,
) -> PreparedDataset:
    """Write the manifest and report of the prepared layers into ``out`` and digest them.

    Raises:
        DatasetError: no usable layer among the outcomes.
    """
    root = Path(out)
    manifest, report = summarize(found.source, outcomes, cfg, elapsed_s, found.given)
    report["raw_digest"] = found.digest
    if not manifest.layers:
        raise DatasetError(
            found.given,
            f"no usable layer among {len(outcomes)} found: {report['dropped_by_reason']}",
        )
    write_json(root / "report.json", report)
    write_json(root / "manifest.json", manifest.model_dump(mode="json"))
    return PreparedDataset(
        name=name,
        path=root,
        digest=data_digest(root, manifest.layers),
        views=manifest.views,
        layers=len(manifest.layers),
        raw_digest=found.digest,
        report=report,
    )


def prepare_dataset(
    raw: str | Path,
    out: str | Path,
    cfg: PrepareConfig | None = None,
    progress: Progress | None = None,
    name: str | None = None,
) -> PreparedDataset:
    """Prepare ``raw`` (Kaggle triplets dir/zip, images+masks folder, am04 tree, synthetic build).

    Writes the layout described in :mod:`pbf_core.data.dataset` into a temporary sibling
    directory and swaps it into ``out`` only when complete: a failure midway leaves an earlier
    ``out`` intact.

    Args:
        raw: raw dataset directory or ``.zip``; never modified.
        out: output directory (created; replaced only if it already holds a prepared dataset).
        cfg: preparation config (defaults if None).
        progress: called as ``progress(done, total)`` after each layer.
        name: dataset name (default: ``out``'s name).

    Returns:
        The prepared dataset (its report is also in ``out/report.json``).

    Raises:
        DatasetError: missing/unrecognised raw data, unsafe output location, or no usable layer.
    """
    cfg = cfg or PrepareConfig()
    raw, out = Path(raw), Path(out)
    _check_output(raw, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp_name:
        tmp = Path(tmp_name)
        found = discover_layers(raw, tmp / "staging")
        outcomes = []
        for i, record in enumerate(found.source.records):
            outcomes.append(prepare_layer(record, tmp / "data", cfg))
            if progress:
                progress(i + 1, len(found.source.records))
        elapsed = time.perf_counter() - start
        dataset = write_dataset(name or out.name, found, outcomes, tmp / "data", cfg, elapsed)
        backup = tmp / "previous"
        if out.exists():
            out.replace(backup)
        (tmp / "data").replace(out)
        shutil.rmtree(backup, ignore_errors=True)
    return replace(dataset, path=out)
