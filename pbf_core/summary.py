"""What one pipeline run did, and its one formatting.

:class:`RunSummary` is the training flow's result; :func:`summary_markdown` formats it once, for
the end of ``pbf run`` (rendered in the terminal) and for the flow run's Prefect artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pbf_core.data.dataset import PreparedDataset
from pbf_core.deploy.parity import Parity
from pbf_core.evaluation.held_out import HeldOutScores
from pbf_core.evaluation.promotion import Decision
from pbf_core.evaluation.scores import HEADLINE, Evaluation


@dataclass(frozen=True)
class TrackingRun:
    """The tracking run of a pipeline run: its id, experiment and where to see it."""

    run_id: str
    experiment_id: str
    url: str


@dataclass(frozen=True)
class RegisteredVersions:
    """The registry versions one run created: the int8 file and its fp32 sibling."""

    int8: str
    fp32: str

    def to_dict(self) -> dict[str, str]:
        return {"int8": self.int8, "fp32": self.fp32}


@dataclass(frozen=True)
class RunSummary:
    """A finished pipeline run.

    Attributes:
        dataset: the prepared dataset (with its split).
        run: the tracking run.
        registry: registered model name.
        versions: the versions this run registered.
        decision: the promotion gate's decision.
        champion_version: the int8 version the ``champion`` alias points at after the run.
        bento_model: the BentoML model tag packaged for serving (None: not promoted).
        evaluation: the candidate on the evaluation layers.
        held_out: the candidate on a style family no training build used (None: check off).
        training: the fit's summary (device, precision, epochs, stop reason, seconds).
        speedup: int8 ONNX latency speed-up over PyTorch fp32 per input side.
        parity: the int8 variant's parity gate.
        seconds: wall time of the whole run.
    """

    dataset: PreparedDataset
    run: TrackingRun
    registry: str
    versions: RegisteredVersions
    decision: Decision
    champion_version: str | None
    bento_model: str | None
    evaluation: Evaluation
    held_out: HeldOutScores | None
    training: dict[str, Any]
    speedup: dict[str, float]
    parity: Parity
    seconds: float

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        """Headline scores per reference (``truth``, ``weak``)."""
        return {k: v.headline for k, v in self.evaluation.by_labels().items()}


def _scores_table(summary: RunSummary) -> list[str]:
    lines = [
        "| against | Dice | recall | precision | instance recall | FP / layer |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for labels, m in summary.scores.items():
        name = "true masks" if labels == "truth" else "weak labels"
        cells = [f"{m[k]:.3f}" for k in HEADLINE[:-1]] + [f"{m[HEADLINE[-1]]:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _parity_line(parity: Parity) -> str:
    verdict = "passed" if parity.passed else f"FAILED: {parity.reason}"
    return (
        f"int8 parity gate {verdict}: Dice {parity.dice:.4f} against the {parity.labels} masks "
        f"(fp32 {parity.reference_dice:.4f}, loss {parity.dice_loss:+.4f}, tolerance "
        f"{parity.dice_tolerance}); masks agree with fp32's at Dice {parity.agreement_dice:.4f}"
    )


def summary_markdown(summary: RunSummary) -> str:
    """The run as markdown: promotion, registry, scores against truth and weak labels, speed."""
    d, v, split = summary.decision, summary.versions, summary.dataset.require_split()
    champion = f"v{summary.champion_version}" if summary.champion_version else "none yet"
    speed = ", ".join(f"{side}²: {x:.2f}x" for side, x in summary.speedup.items()) or "n/a"
    t = summary.training
    lines = [
        f"# PBF training run on `{summary.dataset.name}`",
        "",
        f"- **Promotion:** {d.alias} — {d.reason}",
        f"- **Registry:** `{summary.registry}` int8 v{v.int8}, fp32 v{v.fp32}; "
        f"champion: {champion}",
        f"- **MLflow run:** [{summary.run.run_id}]({summary.run.url})",
        f"- **Data:** {summary.dataset.layers} layers, digest `{summary.dataset.digest[:12]}`; "
        f"evaluation set `{split.eval_digest[:12]}` ({len(split.eval_ids)} {split.evaluated_on} "
        "layers)",
        f"- **Training:** {t.get('seconds', 0):.0f} s on {t.get('device')} "
        f"({t.get('precision')}), stopped: {t.get('stopped')}",
        *_environment_line(t.get("environment")),
        f"- **Speed:** int8 ONNX vs PyTorch fp32 {speed}",
        f"- **Parity:** {_parity_line(summary.parity)}",
        f"- **Pipeline:** {summary.seconds:.0f} s",
        "",
        f"Candidate on {summary.evaluation.layers} held-out layers:",
        "",
        *_scores_table(summary),
        *_held_out_lines(summary.held_out),
    ]
    return "\n".join(lines) + "\n"


def _environment_line(env: dict[str, Any] | None) -> list[str]:
    """The libraries the weights depend on (a rerun elsewhere compares these first)."""
    if not env:
        return []
    return ["- **Environment:** " + ", ".join(f"{k} {v}" for k, v in env.items())]


def _held_out_lines(held_out: HeldOutScores | None) -> list[str]:
    if held_out is None:
        return []
    s = held_out.scores
    return [
        "",
        f"Candidate on {held_out.layers} layers of the held-out `{held_out.style}` style "
        f"(never trained on; {held_out.size}², seed {held_out.seed}): Dice {s['dice']:.3f}, "
        f"precision {s['precision']:.3f}, recall {s['recall']:.3f}, instance recall "
        f"{s['instance_recall']:.3f}, {s['false_components']:.2f} false components / layer",
    ]
