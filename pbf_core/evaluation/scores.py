"""Score a segmenter on prepared layers against their true masks and weak labels.

Pure glue between :mod:`pbf_core.inference` (probability maps) and :mod:`pbf_core.metrics`
(scores): no training code, usable on a checkpoint or an ONNX session alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pbf_core.data.dataset import Sample
from pbf_core.deploy.inference import Segmenter
from pbf_core.evaluation.metrics import (
    PixelStats,
    PRCurve,
    instance_counts,
    instance_metrics,
    pixel_metrics,
    pixel_stats,
    precision_recall_curve,
    threshold_for_dice,
    threshold_for_recall,
    type_recall,
    type_recall_counts,
)


def predict_samples(segmenter: Segmenter, samples: Sequence[Sample]) -> list[np.ndarray]:
    """``(H, W)`` float32 probability map of each prepared layer."""
    return [segmenter.predict_proba(s.image) for s in samples]


def score_masks(
    probs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    threshold: float,
    types: Sequence[np.ndarray | None] | None = None,
) -> dict:
    """Pixel, instance and PR scores of probability maps against one kind of reference mask.

    Args:
        probs: ``(H, W)`` float32 probabilities per layer.
        targets: ``(H, W)`` bool reference masks (true masks or weak labels).
        threshold: decision threshold (``prob >= threshold`` is a defect).
        types: optional ``(H, W)`` uint8 defect-type maps for per-type instance recall.

    Returns:
        ``pixel`` (micro and per-image dice/iou/precision/recall), ``instance``
        (instance recall, false positives per image, counts), ``per_type`` (when types are
        given), ``average_precision``, ``best_dice`` with its threshold, ``threshold_recall_95``.
    """
    if len(probs) != len(targets):
        raise ValueError(f"{len(probs)} probability maps for {len(targets)} masks")
    masks = [p >= threshold for p in probs]
    per_layer = [pixel_stats(m, t) for m, t in zip(masks, targets, strict=True)]
    stats = PixelStats(
        *(np.concatenate([getattr(s, f) for s in per_layer]) for f in ("tp", "fp", "fn", "tn"))
    )
    curve = validation_curve(probs, targets)
    out = {
        "layers": len(probs),
        "threshold": threshold,
        "pixel": pixel_metrics(stats, "micro"),
        "pixel_per_image": pixel_metrics(stats, "per_image"),
        "instance": instance_metrics(
            instance_counts(m, t) for m, t in zip(masks, targets, strict=True)
        ),
        "average_precision": curve.average_precision(),
        "best_dice": float(curve.dice.max()),
        "best_dice_threshold": threshold_for_dice(curve),
        "threshold_recall_95": threshold_for_recall(curve, 0.95),
    }
    if types is not None and any(t is not None for t in types):
        out["per_type"] = type_recall(
            type_recall_counts(m, t, ty)
            for m, t, ty in zip(masks, targets, types, strict=True)
            if ty is not None
        )
    return out


def evaluate(
    segmenter: Segmenter,
    samples: Sequence[Sample],
    threshold: float | None = None,
    probs: Sequence[np.ndarray] | None = None,
) -> dict:
    """Score a segmenter on prepared layers against true masks (if any) and weak labels.

    Args:
        segmenter: the model to score.
        samples: prepared layers (see :func:`pbf_core.datasets.load_sample`).
        threshold: decision threshold; the model spec's when None.
        probs: precomputed probability maps of ``samples`` (skips inference).

    Returns:
        ``{"threshold", "layers", "truth": score_masks(...) or None, "weak": score_masks(...)}``.
    """
    if not samples:
        raise ValueError("no layers to evaluate")
    th = segmenter.spec.threshold if threshold is None else threshold
    probs = list(probs) if probs is not None else predict_samples(segmenter, samples)
    with_truth = [i for i, s in enumerate(samples) if s.truth is not None]
    truth = None
    if with_truth:
        truth = score_masks(
            [probs[i] for i in with_truth],
            [samples[i].truth for i in with_truth],
            th,
            [samples[i].types for i in with_truth],
        )
    weak = score_masks(probs, [s.weak for s in samples], th)
    return {"threshold": th, "layers": len(samples), "truth": truth, "weak": weak}


def validation_curve(probs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> PRCurve:
    """Summed pixel PR curve of several layers (used to pick a decision threshold)."""
    if not probs:
        raise ValueError("no layers to build a PR curve from")
    curves = [precision_recall_curve(p, t) for p, t in zip(probs, targets, strict=True)]
    total = curves[0]
    for c in curves[1:]:
        total = total + c
    return total
