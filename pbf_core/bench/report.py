"""Benchmark results: latency statistics and per-variant measurements, as JSON and a markdown table.

Speedups are ratios to the reference variant measured in the same run (machines are noisy; only
ratios within one run compare).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pbf_core.files import write_json


@dataclass(frozen=True)
class Latency:
    """Wall time of one forward pass (ms) over ``iterations`` timed runs."""

    p50_ms: float
    p95_ms: float
    min_ms: float
    mean_ms: float
    iterations: int


@dataclass
class VariantResult:
    """One variant's measurements.

    Attributes:
        latency: batch-1 latency per input side (``"320"`` → :class:`Latency`).
        throughput: images/s at ``throughput_batch`` per input side (from the batch's p50).
        size_mb: file size on disk (MB = 10^6 bytes).
        rss_before_mb: resident memory after importing the runtime, before loading the model.
        peak_rss_mb: peak resident memory of the worker process up to the end of the timed runs.
        parity: quality against the evaluation labels next to the reference's, and the gate
            (see :class:`pbf_core.quantization.Parity`).
    """

    name: str
    runtime: str
    file: str
    size_mb: float
    threads: int
    latency: dict[str, Latency] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    rss_before_mb: float = 0.0
    peak_rss_mb: float = 0.0
    load_s: float = 0.0
    parity: dict | None = None

    @property
    def model_memory_mb(self) -> float:
        """Peak resident memory above the runtime's own: the model and its activations (MB)."""
        return self.peak_rss_mb - self.rss_before_mb


@dataclass
class BenchmarkReport:
    """Every variant's results from one run, with the machine and the settings."""

    machine: dict[str, Any]
    config: dict[str, Any]
    reference: str
    variants: list[VariantResult]

    def to_dict(self) -> dict:
        out = asdict(self)
        for v, res in zip(out["variants"], self.variants, strict=True):
            v["model_memory_mb"] = round(res.model_memory_mb, 1)
            v["speedup"] = self.speedups(res)
        return out

    def result(self, name: str) -> VariantResult:
        for res in self.variants:
            if res.name == name:
                return res
        raise KeyError(f"no variant {name!r}; measured: {[v.name for v in self.variants]}")

    def speedups(self, res: VariantResult) -> dict[str, float]:
        """Batch-1 p50 speedup over the reference variant per input side (x, higher is faster)."""
        try:
            ref = self.result(self.reference)
        except KeyError:
            return {}
        return {
            side: round(ref.latency[side].p50_ms / lat.p50_ms, 2)
            for side, lat in res.latency.items()
            if side in ref.latency
        }


def format_markdown(report: BenchmarkReport) -> str:
    """The report as a markdown table with the machine and settings above it."""
    cfg, m = report.config, report.machine
    sides = [str(s) for s in cfg["sizes"]]
    head = [
        "variant",
        "file MB",
        *(f"b{cfg['batch']} {s}² p50 / p95 ms" for s in sides),
        *(f"speedup {s}²" for s in sides),
        *(f"b{cfg['throughput_batch']} {s}² img/s" for s in sides),
        "peak RSS MB (model)",
        "Dice / recall",
        "loss vs fp32",
        "agreement with fp32",
        "parity",
    ]
    rows = []
    for res in report.variants:
        speed = report.speedups(res)
        p = res.parity
        rows.append(
            [
                res.name,
                f"{res.size_mb:.1f}",
                *(f"{res.latency[s].p50_ms:.1f} / {res.latency[s].p95_ms:.1f}" for s in sides),
                *(f"{speed.get(s, float('nan')):.2f}x" for s in sides),
                *(f"{res.throughput[s]:.1f}" for s in sides),
                f"{res.peak_rss_mb:.0f} ({res.model_memory_mb:.0f})",
                f"{p['dice']:.4f} / {p['recall']:.4f}" if p else "-",
                f"{p['dice_loss']:+.4f} / {p['recall_loss']:+.4f}" if p else "-",
                f"{p['agreement_dice']:.4f} / {p['agreement_recall']:.4f}" if p else "-",
                ("pass" if p["passed"] else f"FAIL: {p['reason']}") if p else "-",
            ]
        )
    load = [[round(x, 2) for x in m.get(k) or ()] for k in ("loadavg", "loadavg_after")]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; "
        f"threads: {cfg['threads']}; load average (1, 5, 15 min) before {load[0]} after "
        f"{load[1]}.",
        f"Runtimes: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}. "
        f"Latency: {cfg['iterations']} runs after {cfg['warmup']} warm-up, best of "
        f"{cfg['rounds']} round(s); speedup = reference ({report.reference}) p50 / variant p50.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    gated = next((r.parity for r in report.variants if r.parity), None)
    if gated:
        lines += [
            "",
            f"Parity: pixel Dice / recall against the {gated['labels']} masks of "
            f"{gated['images']} held-out layers, each variant at its own threshold; loss = "
            f"{report.reference} - variant (fails above {gated['dice_tolerance']} / "
            f"{gated['recall_tolerance']}); agreement = the variant's masks scored against "
            f"{report.reference}'s.",
        ]
    return "\n".join(lines) + "\n"


def write_report(report: BenchmarkReport, out_dir: str | Path, stem: str = "inference") -> Path:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns the JSON path."""
    out_dir = Path(out_dir)
    write_json(out_dir / f"{stem}.json", report.to_dict())
    (out_dir / f"{stem}.md").write_text(format_markdown(report))
    return out_dir / f"{stem}.json"
