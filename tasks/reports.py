"""Report files and Prefect artifacts: PR curve plot, threshold table, overlays, run summary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pbf_core.data.dataset import Sample
from pbf_core.files import write_json

#: Thresholds listed in the threshold table (plus the model's own).
TABLE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
OVERLAYS = 4


def write_evaluation(
    out: Path,
    samples: Sequence[Sample],
    probs: Sequence[np.ndarray],
    result: dict,
    threshold: float,
) -> None:
    """Write ``evaluation.json``, ``pr_curve.png``/``.csv``, ``thresholds.md`` and ``overlays/``.

    The curves and the table use the true masks when the layers have them, else the weak labels.
    """
    from PIL import Image

    from pbf_core.deploy.overlays import find_components, render_overlay
    from pbf_core.evaluation.metrics import instance_curve
    from pbf_core.evaluation.scores import validation_curve

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "evaluation.json", result)
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
        (out / "overlays").mkdir(exist_ok=True)
        Image.fromarray(overlay).save(out / "overlays" / f"{sample.id}.png")


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


def benchmark_metrics(report) -> dict[str, float]:
    """Benchmark report → flat ``bench/<variant>/<measure>`` numbers for MLflow."""
    out: dict[str, float] = {}
    for res in report.variants:
        key = f"bench/{res.name}"
        out[f"{key}/size_mb"] = res.size_mb
        out[f"{key}/peak_rss_mb"] = res.peak_rss_mb
        for side, lat in res.latency.items():
            out[f"{key}/p50_ms_{side}"] = lat.p50_ms
            out[f"{key}/p95_ms_{side}"] = lat.p95_ms
        for side, ips in res.throughput.items():
            out[f"{key}/throughput_{side}"] = ips
        for side, x in report.speedups(res).items():
            out[f"{key}/speedup_{side}"] = x
        if res.parity:
            out[f"{key}/parity_dice"] = res.parity["dice"]
            out[f"{key}/parity_recall"] = res.parity["recall"]
    return out


def summary_markdown(summary: dict) -> str:
    """The run summary as markdown: decision, metrics against truth, speed-up, links."""
    d = summary["decision"]
    lines = [
        f"# PBF training run on `{summary['dataset']['name']}`",
        "",
        f"- **Promotion:** {d['alias']} — {d['reason']}",
        f"- **Registry:** `{summary['registry']}` int8 v{summary['versions']['int8']}, "
        f"fp32 v{summary['versions']['fp32']}; champion: {'v' + summary['champion_version'] if summary['champion_version'] else 'none yet'}",
        f"- **MLflow run:** [{summary['run_id']}]({summary['run_url']})",
        f"- **Data:** {summary['dataset']['layers']} layers, digest `{summary['dataset']['digest'][:12]}`; "
        f"evaluation set `{summary['eval_digest'][:12]}` ({summary['eval_layers']} layers)",
        f"- **Training:** {summary['training'].get('seconds', 0):.0f} s on "
        f"{summary['training'].get('device')}, stopped: {summary['training'].get('stopped')}",
        "",
        "| labels | Dice | recall | precision | instance recall | FP / image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for labels, m in summary["scores"].items():
        lines.append(
            f"| {labels} | {m['dice']:.4f} | {m['recall']:.4f} | {m['precision']:.4f} | "
            f"{m['instance_recall']:.4f} | {m['false_positives_per_image']:.2f} |"
        )
    speed = ", ".join(f"{s}²: {x:.2f}x" for s, x in summary["speedup"].items())
    lines += [
        "",
        f"int8 (ONNX Runtime) vs PyTorch fp32 speed-up: {speed or 'n/a'}; parity: "
        f"{'passed' if summary['parity'].get('passed') else 'FAILED ' + summary['parity'].get('reason', '')}",
    ]
    return "\n".join(lines) + "\n"


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(summary: dict) -> str:
    """Publish the run summary and the promotion decision as Prefect artifacts."""
    create_markdown_artifact(
        summary_markdown(summary), key="pbf-run-summary", description="key metrics"
    )
    create_table_artifact(
        [
            {"labels": k, **{m: round(v, 4) for m, v in s.items()}}
            for k, s in summary["scores"].items()
        ],
        key="pbf-metrics",
        description="evaluation metrics of the candidate",
    )
    d = summary["decision"]
    return create_markdown_artifact(
        f"**{d['alias']}** ({summary['registry']} int8 v{summary['versions']['int8']}): {d['reason']}",
        key="pbf-promotion",
        description="promotion decision",
    )
