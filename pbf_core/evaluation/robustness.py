"""Robustness: how a segmenter (a model or a weak-label method) holds up where it has not been.

Held-out layers are rendered fresh (another seed than any training build) in the classic look
and in other style families, the held-out one included; each corruption of
:mod:`pbf_core.evaluation.corruptions` is applied at every severity to the classic ones. Every
condition is scored against the true masks the generator painted: pixel Dice, precision, recall
(micro-averaged), instance recall and false components per layer. ``benchmarks/robustness.py``
runs it for the fp32 and int8 model and every weak-label method and writes the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from pbf_core.config import LabelConfig, PrepareConfig, SynthConfig
from pbf_core.data.imaging import box_mask, normalize_views
from pbf_core.data.labels import synthesize_labels
from pbf_core.evaluation.corruptions import SEVERITIES, corrupt
from pbf_core.evaluation.metrics import instance_counts, instance_metrics

if TYPE_CHECKING:
    from pbf_core.data.synthetic.styles import LookRanges

#: What :func:`score_layers` returns for a condition, in the order tables show it.
SCORES: tuple[str, ...] = ("dice", "precision", "recall", "instance_recall", "false_components")


def score_cells(row: Mapping[str, float]) -> list[str]:
    """Table cells of a row's :data:`SCORES`: 3 decimals, false components per layer 2."""
    return [f"{row[k]:.2f}" if k == "false_components" else f"{row[k]:.3f}" for k in SCORES]


#: A segmenter of raw layers: ``(C, H, W)`` uint16 views → ``(H, W)`` bool defect mask.
MaskFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class HeldOutLayer:
    """A rendered layer no model was trained on: raw views and the true mask."""

    id: str
    views: np.ndarray  # (3, H, W) uint16
    truth: np.ndarray  # (H, W) bool


@dataclass(frozen=True)
class ConditionScore:
    """One segmenter under one condition (``clean``, a corruption, or ``style:<family>``)."""

    method: str
    condition: str
    severity: int  # 0 for clean layers and style families
    layers: int
    dice: float
    precision: float
    recall: float
    instance_recall: float
    false_components: float  # predicted components touching no true defect, per layer

    def to_dict(self) -> dict:
        return asdict(self)


def held_out_layers(
    style: str, layers: int, size: int, seed: int, ranges: LookRanges | None = None
) -> list[HeldOutLayer]:
    """``layers`` rendered layers of a ``style`` build (no noise frames) with their truth.

    ``ranges`` replace the family's look ranges (see
    :func:`~pbf_core.data.synthetic.styles.draw_look`).
    """
    from pbf_core.data.synthetic import render_layer

    cfg = SynthConfig(layers=layers, size=size, seed=seed, style=style, noise_frames=0)
    out = []
    for z in range(layers):
        layer = render_layer(cfg, z, ranges=ranges)
        out.append(HeldOutLayer(f"{style}-{seed}-{z}", layer.views, layer.truth))
    return out


def model_masks(segmenter) -> MaskFn:
    """A :class:`~pbf_core.deploy.inference.Segmenter` as a :data:`MaskFn` (its own threshold)."""
    views = segmenter.spec.views

    def masks(raw: np.ndarray) -> np.ndarray:
        source = dict(zip(views, raw, strict=True)) if len(views) > 1 else raw[0]
        return segmenter.segment(source).mask

    return masks


def weak_label_masks(method: str, prepare: PrepareConfig | None = None) -> MaskFn:
    """A weak-label method as a :data:`MaskFn`: normalised as ``pbf prepare`` does, then labelled."""
    prepare = prepare or PrepareConfig()
    labels = LabelConfig(method=method)
    lo, hi = prepare.percentiles

    def masks(raw: np.ndarray) -> np.ndarray:
        image, box = normalize_views(raw, prepare.normalization, lo, hi)
        return synthesize_labels(image, labels, box_mask(raw.shape[1:], box))

    return masks


def score_layers(
    masks: MaskFn, layers: Sequence[HeldOutLayer], corruption: str | None = None,
    severity: int = 0, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Pixel and instance scores of ``masks`` on ``layers``, corrupted when asked."""
    counts = []
    for i, layer in enumerate(layers):
        views = (
            layer.views
            if corruption is None
            else corrupt(layer.views, corruption, severity, seed + i)
        )
        counts.append(instance_counts(masks(views), layer.truth))
    q = instance_metrics(counts)
    return {
        **{k: float(q[k]) for k in SCORES[:-1]},  # all but false_components, named apart
        "false_components": float(q["false_positives_per_image"]),
    }


def robustness_scores(
    methods: Mapping[str, MaskFn],
    clean: Sequence[HeldOutLayer],
    corruptions: Iterable[str],
    styles: Mapping[str, Sequence[HeldOutLayer]] | None = None,
    severities: Sequence[int] = SEVERITIES,
    progress: Callable[[str], None] | None = None,
) -> list[ConditionScore]:
    """Every method on the clean layers, each corruption at each severity, and each style."""
    conditions: list[tuple[str, int, Sequence[HeldOutLayer], str | None]] = [
        ("clean", 0, clean, None)
    ]
    conditions += [(c, s, clean, c) for c in corruptions for s in severities]
    conditions += [(f"style:{name}", 0, layers, None) for name, layers in (styles or {}).items()]
    rows = []
    for name, fn in methods.items():
        for condition, severity, layers, corruption in conditions:
            scores = score_layers(fn, layers, corruption, severity)
            rows.append(ConditionScore(name, condition, severity, len(layers), **scores))
            if progress is not None:
                progress(f"{name} {condition} {severity or ''}".strip())
    return rows


def relative_to_clean(rows: Sequence[ConditionScore], max_severity: int = 3) -> dict[str, dict]:
    """Per method and corruption: mean Dice over severities ``1..max_severity`` relative to the
    method's clean Dice, and the worst false components per layer among them."""
    clean = {r.method: r.dice for r in rows if r.condition == "clean"}
    out: dict[str, dict] = {}
    for r in rows:
        if r.severity < 1 or r.severity > max_severity:
            continue
        entry = out.setdefault(r.method, {}).setdefault(r.condition, {"dice": [], "fc": []})
        entry["dice"].append(r.dice)
        entry["fc"].append(r.false_components)
    return {
        method: {
            c: {
                "mean_dice": float(np.mean(v["dice"])),
                "relative_dice": float(np.mean(v["dice"]) / clean[method])
                if clean[method]
                else 0.0,
                "worst_false_components": float(max(v["fc"])),
            }
            for c, v in per.items()
        }
        for method, per in out.items()
    }
