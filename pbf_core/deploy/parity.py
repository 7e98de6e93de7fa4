"""The parity gate every exported variant must pass, and the int8 threshold matched to fp32.

:func:`check_parity` scores a variant's masks against the evaluation layers' labels next to the
reference's (the PyTorch fp32 model); a variant losing more Dice or recall than the configured
tolerance fails, with the numbers in the result. :func:`match_threshold` re-picks a quantized
model's decision threshold so its masks agree best with the fp32 model's (quantization shifts the
scores slightly but systematically).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pbf_core.config import QuantizeConfig
from pbf_core.errors import QuantizationError

#: The variant every other one is compared with: the trained PyTorch model, fp32, eager.
REFERENCE_VARIANT = "torch-fp32"


@dataclass(frozen=True)
class Parity:
    """A variant's segmentation quality on an evaluation set, next to the reference's (fp32).

    ``dice`` and ``recall`` score the variant's masks against the set's labels (true masks when
    every layer has one, else weak labels); ``reference_dice``/``reference_recall`` score the
    reference's masks the same way. The gate fails when the variant loses more than a tolerance on
    either (``reference - variant > tolerance``; gains pass). ``agreement_dice`` and
    ``agreement_recall`` compare the variant's masks with the reference's directly (pixel-wise,
    the reference taken as truth), showing how many decisions changed. All are micro-averaged
    over the set's pixels.
    """

    variant: str
    labels: str
    images: int
    dice: float
    recall: float
    reference_dice: float
    reference_recall: float
    agreement_dice: float
    agreement_recall: float
    dice_tolerance: float
    recall_tolerance: float
    passed: bool
    reason: str = ""

    @property
    def dice_loss(self) -> float:
        return self.reference_dice - self.dice

    @property
    def recall_loss(self) -> float:
        return self.reference_recall - self.recall

    def to_dict(self) -> dict:
        out = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}
        out["dice_loss"] = round(self.dice_loss, 4)
        out["recall_loss"] = round(self.recall_loss, 4)
        return out


def _micro_stats(variant: str, pred: Sequence[np.ndarray], target: Sequence[np.ndarray]):
    from pbf_core.evaluation.metrics import PixelStats, pixel_stats

    if len(pred) != len(target) or not pred:
        raise QuantizationError(variant, f"{len(pred)} masks to compare with {len(target)}")
    per_image = []
    for i, (p, t) in enumerate(zip(pred, target, strict=True)):
        if p.shape != t.shape:
            raise QuantizationError(variant, f"image {i}: mask shape {p.shape} != {t.shape}")
        per_image.append(pixel_stats(p, t))
    return PixelStats(
        *(np.concatenate([getattr(s, k) for s in per_image]) for k in ("tp", "fp", "fn", "tn"))
    )


def check_parity(
    variant: str,
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    cfg: QuantizeConfig | None = None,
    label_kind: str = "truth",
) -> Parity:
    """Gate a variant's masks on its Dice and recall loss against the reference's.

    Args:
        variant: name reported in the result.
        reference: ``(H, W) bool`` masks of the fp32 model, one per evaluation image.
        candidate: the variant's masks for the same images.
        labels: ``(H, W) bool`` labels of the same images.
        cfg: ``dice_tolerance`` and ``recall_tolerance``.
        label_kind: what ``labels`` are (``truth`` or ``weak``), reported.

    Returns:
        The :class:`Parity`; empty masks against empty labels score 1.

    Raises:
        QuantizationError: different or zero image counts, or mask shapes that differ.
    """
    from pbf_core.evaluation.metrics import dice_score, recall_score

    cfg = cfg or QuantizeConfig()
    ref = _micro_stats(REFERENCE_VARIANT, reference, labels)
    got = _micro_stats(variant, candidate, labels)
    agree = _micro_stats(variant, candidate, reference)
    dice, recall = dice_score(got), recall_score(got)
    ref_dice, ref_recall = dice_score(ref), recall_score(ref)
    problems = []
    if ref_dice - dice > cfg.dice_tolerance:
        problems.append(
            f"Dice {dice:.4f} vs fp32 {ref_dice:.4f}: loses {ref_dice - dice:.4f} "
            f"> {cfg.dice_tolerance}"
        )
    if ref_recall - recall > cfg.recall_tolerance:
        problems.append(
            f"recall {recall:.4f} vs fp32 {ref_recall:.4f}: loses {ref_recall - recall:.4f} "
            f"> {cfg.recall_tolerance}"
        )
    return Parity(
        variant=variant,
        labels=label_kind,
        images=len(candidate),
        dice=dice,
        recall=recall,
        reference_dice=ref_dice,
        reference_recall=ref_recall,
        agreement_dice=dice_score(agree),
        agreement_recall=recall_score(agree),
        dice_tolerance=cfg.dice_tolerance,
        recall_tolerance=cfg.recall_tolerance,
        passed=not problems,
        reason="; ".join(problems),
    )


def match_threshold(
    reference: Sequence[np.ndarray],
    probabilities: Sequence[np.ndarray],
    thresholds: np.ndarray | None = None,
) -> tuple[float, float]:
    """The threshold on ``probabilities`` whose masks best agree (Dice) with ``reference``.

    Quantization shifts a model's scores slightly but systematically (rectified rounding noise
    adds up), so the fp32 threshold makes int8 masks a little larger. Re-picking the threshold on
    held-out layers — the quantized file carries its own — restores the fp32 decisions.

    Args:
        reference: ``(H, W) bool`` fp32 masks.
        probabilities: ``(H, W) float32`` probabilities of the quantized model, same layers.
        thresholds: candidates (default :data:`pbf_core.evaluation.metrics.DEFAULT_THRESHOLDS`).

    Returns:
        ``(threshold, agreement Dice)``; ties go to the lowest threshold.
    """
    from pbf_core.evaluation.metrics import DEFAULT_THRESHOLDS

    ts = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, np.float64)
    ref = np.concatenate([r.ravel() for r in reference]).astype(bool)
    prob = np.concatenate([p.ravel() for p in probabilities])
    on, all_ = np.sort(prob[ref]), np.sort(prob)
    # pixels at or above each threshold: among the reference's mask, and in total
    inside = len(on) - np.searchsorted(on, ts, side="left")
    total = len(all_) - np.searchsorted(all_, ts, side="left")
    denom = total + len(on)
    dice = np.where(denom > 0, 2 * inside / np.maximum(denom, 1), 1.0)
    best = int(np.argmax(dice))
    return float(ts[best]), float(dice[best])
