"""Score a segmenter on prepared layers against their true masks and weak labels.

:func:`evaluate_model` is the pipeline's evaluate step (``pbf evaluate``, the flow's evaluate
task, and the promotion gate's scoring of the current champion): it runs any model file on the
layers of a prepared dataset and returns an :class:`Evaluation`. Under it, :func:`evaluate` and
:func:`score_masks` are pure glue between the probability maps and :mod:`pbf_core.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pbf_core.data.dataset import PreparedDataset, Sample
from pbf_core.deploy.inference import Segmenter, load_segmenter
from pbf_core.errors import DatasetError
from pbf_core.evaluation.metrics import (
    PixelStats,
    instance_counts,
    instance_metrics,
    pixel_metrics,
    pixel_stats,
    threshold_for_dice,
    threshold_for_recall,
    type_recall,
    type_recall_counts,
    validation_curve,
)

#: The numbers a run is summarised by (pixel scores, then instance scores).
HEADLINE: tuple[str, ...] = (
    "dice",
    "recall",
    "precision",
    "instance_recall",
    "false_positives_per_image",
)


def metric_key(labels: str, score: str, prefix: str = "test") -> str:
    """The MLflow name of one score: ``<prefix>/<labels>/<score>``."""
    return f"{prefix}/{labels}/{score}"


@dataclass(frozen=True)
class LabelScores:
    """Scores of probability maps against one kind of reference mask (true masks or weak labels).

    Attributes:
        layers: layers scored.
        threshold: the decision threshold (``prob >= threshold`` is a defect).
        pixel, pixel_per_image: ``dice``, ``iou``, ``precision``, ``recall``, micro-averaged over
            pixels or averaged over layers.
        instance: ``instance_recall``, ``false_positives_per_image`` and the summed counts.
        average_precision, best_dice, best_dice_threshold, threshold_recall_95: from the pixel
            PR curve.
        per_type: instance recall per defect type, when the layers have type maps.
    """

    layers: int
    threshold: float
    pixel: Mapping[str, float]
    pixel_per_image: Mapping[str, float]
    instance: Mapping[str, float]
    average_precision: float
    best_dice: float
    best_dice_threshold: float
    threshold_recall_95: float
    per_type: Mapping[str, Mapping[str, float]] | None = None

    @property
    def headline(self) -> dict[str, float]:
        """:data:`HEADLINE` numbers: pixel Dice/recall/precision, instance recall, FP/layer."""
        merged = {**self.pixel, **self.instance}
        return {k: float(merged[k]) for k in HEADLINE}

    def numbers(self) -> dict[str, float]:
        """Every scalar score, flat: pixel and instance scores, AP and best Dice."""
        flat = {
            **self.pixel,
            **self.instance,
            "average_precision": self.average_precision,
            "best_dice": self.best_dice,
        }
        return {
            k: float(v)
            for k, v in flat.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["per_type"] is None:
            del out["per_type"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelScores:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Evaluation:
    """A model scored on prepared layers against their true masks (when any) and weak labels.

    Attributes:
        threshold: the decision threshold used.
        layers: layers scored.
        truth: scores against the true masks of the layers that have one, else None.
        weak: scores against the weak labels of every layer.
        report_dir: where :func:`pbf_core.evaluation.report.write_report` put the PR curve,
            threshold table and overlays, when asked.
    """

    threshold: float
    layers: int
    truth: LabelScores | None
    weak: LabelScores
    report_dir: Path | None = None

    @property
    def reference(self) -> Literal["truth", "weak"]:
        """What the headline scores are against: true masks when the layers have them."""
        return "truth" if self.truth is not None else "weak"

    @property
    def primary(self) -> LabelScores:
        return self.truth if self.truth is not None else self.weak

    def by_labels(self) -> dict[str, LabelScores]:
        """``{"truth": ..., "weak": ...}`` without the missing one."""
        return {k: v for k, v in (("truth", self.truth), ("weak", self.weak)) if v is not None}

    def metrics(self, prefix: str = "test") -> dict[str, float]:
        """Flat ``<prefix>/<labels>/<score>`` numbers and ``<prefix>/threshold`` (for MLflow)."""
        out = {
            metric_key(labels, name, prefix): value
            for labels, scores in self.by_labels().items()
            for name, value in scores.numbers().items()
        }
        out[f"{prefix}/threshold"] = float(self.threshold)
        return out

    def gate_metrics(self) -> dict[str, float]:
        """``"<labels>/<score>"`` numbers, the keys of :class:`pbf_core.evaluation.promotion.Scores`."""
        return {
            f"{labels}/{name}": value
            for labels, scores in self.by_labels().items()
            for name, value in scores.numbers().items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "layers": self.layers,
            "truth": self.truth.to_dict() if self.truth is not None else None,
            "weak": self.weak.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        truth = data.get("truth")
        return cls(
            threshold=float(data["threshold"]),
            layers=int(data["layers"]),
            truth=LabelScores.from_dict(truth) if truth else None,
            weak=LabelScores.from_dict(data["weak"]),
        )


def predict_samples(segmenter: Segmenter, samples: Sequence[Sample]) -> list[np.ndarray]:
    """``(H, W)`` float32 probability map of each prepared layer (kept to its bed, when the
    model's spec says so and the manifest has it)."""
    return [segmenter.predict_proba(s.image, s.bed) for s in samples]


def score_masks(
    probs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    threshold: float,
    types: Sequence[np.ndarray | None] | None = None,
) -> LabelScores:
    """Pixel, instance and PR scores of probability maps against one kind of reference mask.

    Args:
        probs: ``(H, W)`` float32 probabilities per layer.
        targets: ``(H, W)`` bool reference masks (true masks or weak labels).
        threshold: decision threshold (``prob >= threshold`` is a defect).
        types: optional ``(H, W)`` uint8 defect-type maps for per-type instance recall.

    Returns:
        The :class:`LabelScores` (``per_type`` only when type maps are given).
    """
    if len(probs) != len(targets):
        raise ValueError(f"{len(probs)} probability maps for {len(targets)} masks")
    masks = [p >= threshold for p in probs]
    per_layer = [pixel_stats(m, t) for m, t in zip(masks, targets, strict=True)]
    stats = PixelStats(
        *(np.concatenate([getattr(s, f) for s in per_layer]) for f in ("tp", "fp", "fn", "tn"))
    )
    curve = validation_curve(probs, targets)
    per_type = None
    if types is not None and any(t is not None for t in types):
        per_type = type_recall(
            type_recall_counts(m, t, ty)
            for m, t, ty in zip(masks, targets, types, strict=True)
            if ty is not None
        )
    return LabelScores(
        layers=len(probs),
        threshold=threshold,
        pixel=pixel_metrics(stats, "micro"),
        pixel_per_image=pixel_metrics(stats, "per_image"),
        instance=instance_metrics(
            instance_counts(m, t) for m, t in zip(masks, targets, strict=True)
        ),
        average_precision=curve.average_precision(),
        best_dice=float(curve.dice.max()),
        best_dice_threshold=threshold_for_dice(curve),
        threshold_recall_95=threshold_for_recall(curve, 0.95),
        per_type=per_type,
    )


def evaluate(
    segmenter: Segmenter,
    samples: Sequence[Sample],
    threshold: float | None = None,
    probs: Sequence[np.ndarray] | None = None,
) -> Evaluation:
    """Score a segmenter on prepared layers against true masks (if any) and weak labels.

    Args:
        segmenter: the model to score.
        samples: prepared layers (see :func:`pbf_core.data.dataset.load_sample`).
        threshold: decision threshold; the model spec's when None.
        probs: precomputed probability maps of ``samples`` (skips inference).

    Raises:
        ValueError: no layers.
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
    return Evaluation(th, len(samples), truth, weak)


def evaluate_model(
    model: str | Path,
    dataset: PreparedDataset,
    ids: Sequence[str] | None = None,
    *,
    out: str | Path | None = None,
    threshold: float | None = None,
    device: str = "cpu",
) -> Evaluation:
    """Score a model file on layers of a prepared dataset (the pipeline's evaluate step).

    Args:
        model: ``.safetensors`` checkpoint or ``.onnx`` file with pbf metadata.
        dataset: the prepared dataset.
        ids: layers to score; the split's evaluation layers when None.
        out: where to also write the report files (PR curve, threshold table, overlays).
        threshold: decision threshold; the model's own when None.
        device: torch device for a checkpoint.

    Raises:
        DatasetError: the model's input channels differ from the dataset's views, or no ids
            and no split.
        CheckpointError, ExportError: an unreadable model file.
    """
    segmenter = load_segmenter(model, device)
    if segmenter.spec.in_channels != dataset.channels:
        raise DatasetError(
            dataset.path,
            f"the model takes {segmenter.spec.in_channels} channel(s), "
            f"the dataset has {dataset.channels} ({', '.join(dataset.views)})",
        )
    samples = dataset.samples(dataset.require_split().eval_ids if ids is None else ids)
    probs = predict_samples(segmenter, samples)
    evaluation = evaluate(segmenter, samples, threshold, probs)
    if out is None:
        return evaluation
    from pbf_core.evaluation.report import write_report

    write_report(Path(out), samples, probs, evaluation)
    return replace(evaluation, report_dir=Path(out))
