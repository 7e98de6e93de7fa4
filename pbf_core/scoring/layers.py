"""One layer of a build scored: filtered, segmented, its components found; cached on disk.

:func:`score_layer` is pure in its inputs (the layer's files, the model, the threshold) and
writes its mask and a small JSON record under the output directory, keyed by the layer's bytes
and the model: scoring the same layer with the same model again reads the record instead, so an
interrupted run resumes and a rerun scores nothing twice. A layer the filter refuses is a row
with its reason, never an exception.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pbf_core.config import PrepareConfig
from pbf_core.data.filtering import FrameRejected, load_layer_set
from pbf_core.data.imaging import box_mask, read_mask, write_mask
from pbf_core.data.layers import LayerRecord
from pbf_core.deploy.inference import Segmenter
from pbf_core.files import write_json
from pbf_core.scoring.volumes import Component, layer_components


@dataclass(frozen=True)
class LayerScore:
    """One row of ``layers.parquet``.

    ``reason`` is the filter's ``code: reason`` for an unusable layer (its numbers are 0);
    ``truth_pixels`` the true mask's defect pixels when the build has masks, else None.
    """

    layer: str
    index: int
    usable: bool
    reason: str | None
    height: int
    width: int
    defect_pixels: int
    area_pct: float
    components: int
    max_prob: float
    truth_pixels: int | None
    threshold: float
    seconds: float
    digest: str


@dataclass(frozen=True)
class ScoredLayer:
    """A layer's row and its 2D components (``reused``: read from an earlier run)."""

    score: LayerScore
    components: tuple[Component, ...]
    reused: bool = False

    def to_dict(self) -> dict:
        return {"score": asdict(self.score), "components": [asdict(c) for c in self.components]}

    @classmethod
    def from_dict(cls, data: dict) -> ScoredLayer:
        comps = tuple(Component(**c) for c in data["components"])
        return cls(LayerScore(**data["score"]), comps, reused=True)


def _record_path(out: Path, layer: str) -> Path:
    return out / "layers" / f"{layer}.json"


def _cached(out: Path, layer: str, key: str) -> ScoredLayer | None:
    """The layer's record from an earlier run with the same key, when it and its mask exist."""
    try:
        data = json.loads(_record_path(out, layer).read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key:
        return None
    scored = ScoredLayer.from_dict(data)
    if scored.score.usable and not (out / "masks" / f"{layer}.png").is_file():
        return None
    return scored


def _unusable(record: LayerRecord, index: int, exc: FrameRejected, th: float, digest: str):
    score = LayerScore(
        record.layer_id, index, False, f"{exc.code}: {exc.reason}", 0, 0, 0, 0.0, 0, 0.0,
        None, th, 0.0, digest,
    )  # fmt: skip
    return ScoredLayer(score, ())


def score_layer(
    record: LayerRecord, index: int, digest: str, segmenter: Segmenter, out: Path, model_key: str
) -> ScoredLayer:
    """Filter, segment and describe one raw layer; write ``out/masks/<layer>.png`` and its record.

    Args:
        record: the raw layer (any layout ``pbf prepare`` reads).
        index: its position in the build (z order).
        digest: digest of its files (:func:`pbf_core.data.prepare.record_digest`).
        segmenter: the model, with its threshold.
        out: the build's output directory.
        model_key: identifies the model and threshold (part of the cache key).
    """
    key, spec = f"{digest}:{model_key}", segmenter.spec
    found = _cached(out, record.layer_id, key)
    if found is not None:
        return found
    start = time.perf_counter()
    cfg = PrepareConfig(normalization=spec.normalization, percentiles=spec.percentiles)
    try:
        layer = load_layer_set(record, cfg)
        if layer.views != spec.views:
            raise FrameRejected(
                record.layer_id, "wrong_views", f"views {layer.views}, the model takes {spec.views}"
            )
    except FrameRejected as exc:
        scored = _unusable(record, index, exc, spec.threshold, digest)
    else:
        scored = _segmented(layer, index, digest, segmenter, out, start)
    write_json(_record_path(out, record.layer_id), {"key": key, **scored.to_dict()})
    return scored


def _segmented(layer, index: int, digest: str, segmenter: Segmenter, out: Path, start: float):
    bed = box_mask(layer.raw.shape[1:], layer.box) if segmenter.spec.bed_only else None
    result = segmenter.segment(layer.image, bed=bed)
    _, comps = layer_components(layer.layer_id, index, result.mask, result.prob)
    write_mask(out / "masks" / f"{layer.layer_id}.png", result.mask)
    _, h, w = layer.image.shape
    pixels = int(result.mask.sum())
    score = LayerScore(
        layer.layer_id, index, True, None, h, w, pixels, 100.0 * pixels / (h * w), len(comps),
        float(result.prob.max()), None if layer.truth is None else int(layer.truth.sum()),
        float(result.threshold), round(time.perf_counter() - start, 3), digest,
    )  # fmt: skip
    return ScoredLayer(score, tuple(comps))


def layer_labels(out: Path, scored: ScoredLayer) -> np.ndarray | None:
    """The 8-connected label image of a scored layer's mask (None when it was not usable)."""
    import cv2

    if not scored.score.usable:
        return None
    mask = read_mask(out / "masks" / f"{scored.score.layer}.png")
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[1]
