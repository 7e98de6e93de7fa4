"""Segmentation quality as pure functions of masks and probability maps.

Pixel metrics follow segmentation-models-pytorch's shape: count once (:func:`pixel_stats`), then
score with a ``reduction`` — ``micro`` sums the counts over images before dividing (every pixel
weighs the same), ``per_image`` scores each image and averages (every image weighs the same).
Instance metrics count 8-connected components (:func:`instance_counts` per layer, micro-averaged
by :func:`instance_metrics`); the model's evaluation and the weak labels' quality report use the
same counting, so they are comparable. :class:`PRCurve` holds pixel counts at every threshold and
sums over layers; the decision threshold is picked on it.

Empty denominators score what a perfect segmenter would get (an image without defects and
without predictions scores 1.0), which keeps results NaN-free and JSON-serialisable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from pbf_core.data.layers import DEFECT_TYPES

Reduction = Literal["micro", "per_image"]

#: Default thresholds of :func:`precision_recall_curve`: fine enough to pick an operating point
#: at high recall, where probabilities of faint defect edges crowd together.
DEFAULT_THRESHOLDS = np.round(np.linspace(0.005, 0.995, 199), 3)


@dataclass(frozen=True)
class PixelStats:
    """Per-image pixel counts, each ``(N,)`` int64."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray


def _as_batch(mask: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"{name} must be (H, W) or (N, H, W), got shape {m.shape}")
    if m.dtype != bool and not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"{name} must be bool or integer (threshold probabilities first)")
    return m.astype(bool, copy=False)


def pixel_stats(pred: np.ndarray, target: np.ndarray) -> PixelStats:
    """Count true/false positives/negatives per image.

    Args:
        pred, target: ``(H, W)`` or ``(N, H, W)`` bool (or integer, non-zero = defect) masks.

    Raises:
        ValueError: float input, wrong rank or shapes that differ.
    """
    p, t = _as_batch(pred, "pred"), _as_batch(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != target shape {t.shape}")
    axes = (1, 2)
    tp = (p & t).sum(axis=axes, dtype=np.int64)
    fp = (p & ~t).sum(axis=axes, dtype=np.int64)
    fn = (~p & t).sum(axis=axes, dtype=np.int64)
    tn = np.int64(p[0].size) - tp - fp - fn
    return PixelStats(tp, fp, fn, tn)


def _score(num: np.ndarray, den: np.ndarray, reduction: Reduction) -> float:
    if reduction == "micro":
        n, d = int(num.sum()), int(den.sum())
        return n / d if d else 1.0
    if reduction == "per_image":
        safe = np.where(den > 0, num / np.maximum(den, 1), 1.0)
        return float(safe.mean()) if safe.size else 1.0
    raise ValueError(f"unknown reduction {reduction!r}; valid: micro, per_image")


def dice_score(stats: PixelStats, reduction: Reduction = "micro") -> float:
    """Dice (F1) = 2 TP / (2 TP + FP + FN)."""
    return _score(2 * stats.tp, 2 * stats.tp + stats.fp + stats.fn, reduction)


def iou_score(stats: PixelStats, reduction: Reduction = "micro") -> float:
    """IoU (Jaccard) = TP / (TP + FP + FN)."""
    return _score(stats.tp, stats.tp + stats.fp + stats.fn, reduction)


def precision_score(stats: PixelStats, reduction: Reduction = "micro") -> float:
    """Precision = TP / (TP + FP)."""
    return _score(stats.tp, stats.tp + stats.fp, reduction)


def recall_score(stats: PixelStats, reduction: Reduction = "micro") -> float:
    """Recall = TP / (TP + FN)."""
    return _score(stats.tp, stats.tp + stats.fn, reduction)


def pixel_metrics(stats: PixelStats, reduction: Reduction = "micro") -> dict[str, float]:
    """``dice``, ``iou``, ``precision``, ``recall`` of ``stats`` with one reduction."""
    return {
        "dice": dice_score(stats, reduction),
        "iou": iou_score(stats, reduction),
        "precision": precision_score(stats, reduction),
        "recall": recall_score(stats, reduction),
    }


#: Per-layer counts returned by :func:`instance_counts` and summed by :func:`instance_metrics`.
QUALITY_COUNTS: tuple[str, ...] = (
    "tp",
    "fp",
    "fn",
    "n_true",
    "n_detected",
    "n_pred",
    "n_false_pred",
)


def _check_mask(mask: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) mask, got shape {mask.shape}")
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        # A float map is usually a probability map: thresholding it is the caller's decision.
        raise ValueError(f"{name} must be bool or integer (non-zero = defect), got {mask.dtype}")
    return mask.astype(bool, copy=False)


def instance_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Pixel and instance counts of one predicted mask against the true one.

    Args:
        pred: ``(H, W)`` bool or integer mask, non-zero = defect (weak label or prediction).
        truth: ``(H, W)`` bool or integer true mask of the same shape.

    Returns:
        Counts (keys in :data:`QUALITY_COUNTS`): ``tp``, ``fp``, ``fn`` (pixels); ``n_true``
        (true 8-connected components), ``n_detected`` (true components touched by ``pred``),
        ``n_pred`` (predicted components), ``n_false_pred`` (predicted components touching no
        truth).

    Raises:
        ValueError: not 2-D, float dtype, or shapes differ.
    """
    p = _check_mask(pred, "pred")
    t = _check_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    both = p & t
    n_true, true_labels = cv2.connectedComponents(t.astype(np.uint8), connectivity=8)
    n_pred, pred_labels = cv2.connectedComponents(p.astype(np.uint8), connectivity=8)
    detected = np.unique(true_labels[both])
    touching = np.unique(pred_labels[both])
    return {
        "tp": int(both.sum()),
        "fp": int((p & ~t).sum()),
        "fn": int((t & ~p).sum()),
        "n_true": n_true - 1,
        "n_detected": int(detected.size),
        "n_pred": n_pred - 1,
        "n_false_pred": n_pred - 1 - int(touching.size),
    }


def _ratio(num: int, den: int, empty: float) -> float:
    return num / den if den else empty


def instance_metrics(per_layer: Iterable[dict]) -> dict[str, float | int]:
    """Micro-average per-layer counts from :func:`instance_counts` over a data set.

    Empty denominators take the value a perfect labeller would get, so defect-free layers
    labelled empty score perfectly and results stay NaN-free (valid JSON):
    ``precision`` = 1.0 when nothing was predicted, ``recall`` and ``instance_recall`` = 1.0
    when there is no truth, ``iou`` and ``dice`` = 1.0 when both are empty,
    ``false_positives_per_image`` = 0.0 over zero layers.

    Args:
        per_layer: dicts with at least the keys in :data:`QUALITY_COUNTS`.

    Returns:
        ``precision``, ``recall``, ``iou``, ``dice``, ``instance_recall`` (fractions),
        ``false_positives_per_image`` (false predicted components per layer), ``layers``, and
        the summed counts.

    Raises:
        ValueError: a layer dict lacks one of the counts.
    """
    totals = dict.fromkeys(QUALITY_COUNTS, 0)
    layers = 0
    for i, counts in enumerate(per_layer):
        missing = [k for k in QUALITY_COUNTS if k not in counts]
        if missing:
            raise ValueError(f"layer {i}: quality counts lack {', '.join(missing)}")
        for k in QUALITY_COUNTS:
            totals[k] += int(counts[k])
        layers += 1
    tp, fp, fn = totals["tp"], totals["fp"], totals["fn"]
    return {
        "precision": _ratio(tp, tp + fp, 1.0),
        "recall": _ratio(tp, tp + fn, 1.0),
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "instance_recall": _ratio(totals["n_detected"], totals["n_true"], 1.0),
        "false_positives_per_image": _ratio(totals["n_false_pred"], layers, 0.0),
        "layers": layers,
        **totals,
    }


def type_recall_counts(pred: np.ndarray, truth: np.ndarray, types: np.ndarray) -> dict[str, list]:
    """Per defect type: ``[true components, detected components]`` of one image.

    A true 8-connected component takes the most frequent non-zero type code under it (see
    :data:`pbf_core.datasets.DEFECT_TYPES`; code 0 or unknown codes count as ``unknown``); it is
    detected when ``pred`` touches it.

    Args:
        pred, truth: ``(H, W)`` bool masks.
        types: ``(H, W)`` uint8 type codes.
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if not p.shape == t.shape == np.shape(types):
        raise ValueError(f"shapes differ: pred {p.shape}, truth {t.shape}, types {np.shape(types)}")
    n, labels = cv2.connectedComponents(t.astype(np.uint8), connectivity=8)
    counts: dict[str, list] = {}
    if n <= 1:
        return counts
    fg = labels > 0
    lab, code = labels[fg], np.asarray(types)[fg].astype(np.int64)
    # Votes of each (component, code) pair; code 0 under a true pixel is ignored if any other.
    votes = np.zeros((n, 256), np.int64)
    np.add.at(votes, (lab, code), 1)
    votes[:, 0] = np.where(votes[:, 1:].sum(axis=1) > 0, 0, votes[:, 0])
    kind = votes.argmax(axis=1)
    detected = np.zeros(n, bool)
    detected[np.unique(labels[p & t])] = True
    for comp in range(1, n):
        c = int(kind[comp])
        name = DEFECT_TYPES[c - 1] if 1 <= c <= len(DEFECT_TYPES) else "unknown"
        entry = counts.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += int(detected[comp])
    return counts


def type_recall(per_image: Iterable[dict[str, list]]) -> dict[str, dict[str, float | int]]:
    """Sum per-image :func:`type_recall_counts`: per type ``n_true``, ``n_detected``, ``recall``."""
    total: dict[str, list] = {}
    for counts in per_image:
        for name, (n_true, n_det) in counts.items():
            entry = total.setdefault(name, [0, 0])
            entry[0] += n_true
            entry[1] += n_det
    return {
        name: {"n_true": nt, "n_detected": nd, "instance_recall": nd / nt if nt else 1.0}
        for name, (nt, nd) in sorted(total.items())
    }


@dataclass(frozen=True)
class PRCurve:
    """Pixel counts at each threshold (``prob >= threshold`` is a defect), summable over images.

    Attributes:
        thresholds: ``(T,)`` float64 ascending.
        tp, fp, fn: ``(T,)`` int64.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    def __add__(self, other: PRCurve) -> PRCurve:
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("cannot add PR curves computed at different thresholds")
        return PRCurve(self.thresholds, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> np.ndarray:
        den = self.tp + self.fp
        return np.where(den > 0, self.tp / np.maximum(den, 1), 1.0)

    @property
    def recall(self) -> np.ndarray:
        den = self.tp + self.fn
        return np.where(den > 0, self.tp / np.maximum(den, 1), 1.0)

    @property
    def dice(self) -> np.ndarray:
        den = 2 * self.tp + self.fp + self.fn
        return np.where(den > 0, 2 * self.tp / np.maximum(den, 1), 1.0)

    def average_precision(self) -> float:
        """Area under the step precision-recall curve (recall from high to low threshold)."""
        r = np.concatenate([[0.0], self.recall[::-1]])
        return float(np.sum(np.diff(r) * self.precision[::-1]))

    def to_dict(self) -> dict[str, list]:
        """JSON-serialisable columns."""
        return {
            "threshold": self.thresholds.tolist(),
            "precision": self.precision.tolist(),
            "recall": self.recall.tolist(),
            "dice": self.dice.tolist(),
        }


def precision_recall_curve(
    prob: np.ndarray, target: np.ndarray, thresholds: Sequence[float] | None = None
) -> PRCurve:
    """Pixel precision/recall counts of a probability map at every threshold.

    Args:
        prob: ``(H, W)`` or ``(N, H, W)`` float probabilities in [0, 1].
        target: bool mask of the same shape.
        thresholds: ascending values in (0, 1]; :data:`DEFAULT_THRESHOLDS` when None.

    Returns:
        Counts that add up over images (``curve_a + curve_b``).
    """
    th = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, dtype=np.float64)
    if th.ndim != 1 or th.size == 0 or np.any(np.diff(th) <= 0):
        raise ValueError("thresholds must be a non-empty strictly ascending 1-D sequence")
    p = np.asarray(prob)
    t = np.asarray(target)
    if p.shape != t.shape:
        raise ValueError(f"prob shape {p.shape} != target shape {t.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        raise ValueError(f"prob must be float probabilities, got {p.dtype}")
    t = t.astype(bool, copy=False).ravel()
    # bucket k = number of thresholds <= prob: the pixel is positive at thresholds[:k].
    bucket = np.searchsorted(th, p.ravel(), side="right")
    pos = np.bincount(bucket[t], minlength=th.size + 1)
    neg = np.bincount(bucket[~t], minlength=th.size + 1)
    # predicted positive at threshold i: pixels with bucket > i.
    tp = pos[::-1].cumsum()[::-1][1:]
    fp = neg[::-1].cumsum()[::-1][1:]
    fn = int(t.sum()) - tp
    return PRCurve(th, tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64))


def threshold_for_recall(curve: PRCurve, target_recall: float) -> float:
    """Highest threshold whose pixel recall is at least ``target_recall``.

    Recall falls as the threshold rises, so this is the operating point with the best precision
    that still meets the target. When no threshold reaches it, the lowest one is returned.
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    ok = np.flatnonzero(curve.recall >= target_recall)
    return float(curve.thresholds[ok[-1]] if ok.size else curve.thresholds[0])


def threshold_for_dice(curve: PRCurve) -> float:
    """Threshold of the best pixel Dice (the highest one among ties)."""
    d = curve.dice
    return float(curve.thresholds[np.flatnonzero(d == d.max())[-1]])


def instance_curve(
    probs: Sequence[np.ndarray], truths: Sequence[np.ndarray], thresholds: Sequence[float]
) -> list[dict[str, float]]:
    """Instance recall and false positives per image at each threshold.

    Args:
        probs: ``(H, W)`` float probability maps, one per image.
        truths: ``(H, W)`` bool true masks, same shapes.
        thresholds: decision thresholds to evaluate.

    Returns:
        One dict per threshold: ``threshold``, ``instance_recall``, ``false_positives_per_image``.
    """
    if len(probs) != len(truths):
        raise ValueError(f"{len(probs)} probability maps for {len(truths)} masks")
    rows = []
    for th in thresholds:
        summary = instance_metrics(
            instance_counts(p >= th, t) for p, t in zip(probs, truths, strict=True)
        )
        rows.append(
            {
                "threshold": float(th),
                "instance_recall": summary["instance_recall"],
                "false_positives_per_image": summary["false_positives_per_image"],
            }
        )
    return rows


def validation_curve(probs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> PRCurve:
    """Summed pixel PR curve of several layers (used to pick a decision threshold)."""
    if not probs:
        raise ValueError("no layers to build a PR curve from")
    curves = [precision_recall_curve(p, t) for p, t in zip(probs, targets, strict=True)]
    total = curves[0]
    for c in curves[1:]:
        total = total + c
    return total
