"""Report files of an evaluation: JSON scores, pixel PR curve (CSV and plot), a threshold
table with instance scores, and overlays of the first layers.

Written by :func:`pbf_core.evaluation.scores.evaluate_model` when it is given a directory; the
pipeline uploads the directory to the MLflow run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pbf_core.data.dataset import Sample
from pbf_core.deploy.overlays import find_components, render_overlay, write_overlay
from pbf_core.evaluation.metrics import instance_curve, validation_curve
from pbf_core.files import write_json

if TYPE_CHECKING:
    from pbf_core.evaluation.scores import Evaluation

#: Thresholds listed in the threshold table (plus the model's own).
TABLE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
OVERLAYS = 4


def write_report(
    out: Path,
    samples: Sequence[Sample],
    probs: Sequence[np.ndarray],
    evaluation: Evaluation,
) -> None:
    """Write ``evaluation.json``, ``pr_curve.png``/``.csv``, ``thresholds.md`` and ``overlays/``.

    The curves and the table use the true masks when the layers have them, else the weak labels.
    """
    threshold = evaluation.threshold
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "evaluation.json", evaluation.to_dict())
    labels = "truth" if all(s.truth is not None for s in samples) else "weak"
    targets = [s.truth if labels == "truth" else s.weak for s in samples]
    curve = validation_curve(probs, targets)
    columns = curve.to_dict()
    rows = zip(*columns.values(), strict=True)
    (out / "pr_curve.csv").write_text(
        ",".join(columns) + "\n" + "".join(",".join(f"{v:.6g}" for v in r) + "\n" for r in rows)
    )
    _plot_pr(out / "pr_curve.png", curve, threshold, labels)
    ths = sorted({*TABLE_THRESHOLDS, round(threshold, 4)})
    inst = instance_curve(probs, targets, ths)
    lines = [
        f"Pixel and instance scores on {len(samples)} evaluation layers against {labels} masks; "
        f"**bold** = the model's threshold.",
        "",
        "| threshold | precision | recall | Dice | instance recall | false positives / image |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for th, row in zip(ths, inst, strict=True):
        i = int(np.clip(np.searchsorted(curve.thresholds, th), 0, len(curve.thresholds) - 1))
        cells = [
            f"{th:.3f}",
            f"{curve.precision[i]:.4f}",
            f"{curve.recall[i]:.4f}",
            f"{curve.dice[i]:.4f}",
            f"{row['instance_recall']:.4f}",
            f"{row['false_positives_per_image']:.2f}",
        ]
        if abs(th - threshold) < 1e-6:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "thresholds.md").write_text("\n".join(lines) + "\n")
    for sample, prob in list(zip(samples, probs, strict=True))[:OVERLAYS]:
        mask = prob >= threshold
        overlay = render_overlay(sample.image, mask, find_components(mask, prob))
        write_overlay(out / "overlays" / f"{sample.id}.png", overlay)


def _plot_pr(path: Path, curve, threshold: float, labels: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(curve.recall, curve.precision, lw=1.5)
    i = int(np.clip(np.searchsorted(curve.thresholds, threshold), 0, len(curve.thresholds) - 1))
    ax.plot([curve.recall[i]], [curve.precision[i]], "o", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01))
    ax.set_title(f"pixel PR curve vs {labels} masks (AP {curve.average_precision():.3f})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
