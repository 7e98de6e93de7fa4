"""Run the inference benchmark: every variant in its own worker process, side by side.

Each variant is measured in its own fresh Python process (:func:`pbf_core.bench.worker.run_worker`),
so one runtime's thread pools, allocator caches and imports never weigh on another's numbers, and
its peak resident memory is its own. With ``rounds > 1`` the variants are measured in rotation
several times and each keeps its round with the lowest batch-1 p50 at the first side (all of that
round's numbers), which damps bursts of load from other processes on a shared machine; the load
average before and after is recorded beside the numbers.

:func:`benchmark_model` is the pipeline's benchmark step; :func:`benchmark` measures any list of
:class:`Variant` s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from pbf_core.bench.machine import machine_info
from pbf_core.bench.report import BenchmarkReport, Latency, VariantResult, write_report
from pbf_core.config import BenchmarkConfig, QuantizeConfig
from pbf_core.deploy.parity import REFERENCE_VARIANT, check_parity
from pbf_core.errors import SubjectError
from pbf_core.files import write_json

if TYPE_CHECKING:
    from pbf_core.data.dataset import PreparedDataset

Runtime = Literal["torch", "onnx"]


class BenchmarkError(SubjectError, RuntimeError):
    """A variant could not be benchmarked (its worker failed); names the variant and the cause."""


@dataclass(frozen=True)
class Variant:
    """A model file and how to run it.

    Attributes:
        name: e.g. ``torch-fp32`` (see :data:`pbf_core.deploy.quantization.VARIANTS`).
        runtime: ``torch`` (a checkpoint from :func:`pbf_core.model.checkpoints.save_checkpoint`) or
            ``onnx`` (an ONNX file run by ONNX Runtime).
        path: the file.
        dynamic_int8: apply the prototype's dynamic quantization after loading (torch only).
    """

    name: str
    runtime: Runtime
    path: Path
    dynamic_int8: bool = False


@dataclass(frozen=True)
class EvalSet:
    """Prepared-dataset layers every variant segments for the parity gate."""

    root: Path
    ids: tuple[str, ...]


def _run_job(variant: Variant, job: dict, workdir: Path, timeout_s: float) -> dict:
    tag = f"{variant.name}-{int(time.time() * 1e6)}"
    job_path, result_path = workdir / f"{tag}.job.json", workdir / f"{tag}.result.json"
    write_json(job_path, job)
    threads = str(job["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    code = "import sys; from pbf_core.bench.worker import run_worker; run_worker(*sys.argv[1:3])"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(job_path), str(result_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(variant.name, f"worker ran past {timeout_s} s") from None
    if proc.returncode != 0 or not result_path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise BenchmarkError(variant.name, f"worker failed: {' | '.join(tail)}")
    return json.loads(result_path.read_text())


def benchmark(
    variants: Sequence[Variant],
    cfg: BenchmarkConfig | None = None,
    evaluation: EvalSet | None = None,
    quantize_cfg: QuantizeConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    reference: str = REFERENCE_VARIANT,
) -> BenchmarkReport:
    """Measure every variant in one run; compare speed and masks with the reference variant's.

    Args:
        variants: files to compare; the reference variant should be among them for speedups
            and parity.
        cfg: input sides, batch sizes, iterations, threads, rounds.
        evaluation: layers to segment for the parity gate (the test split); None skips parity.
        quantize_cfg: parity tolerances.
        progress: called as ``progress(done, total)`` after each worker.
        reference: the variant speedups and parity are relative to (PyTorch fp32 eager).

    Returns:
        The :class:`BenchmarkReport`.

    Raises:
        BenchmarkError: a variant's file is missing or its worker failed.
    """
    cfg = cfg or BenchmarkConfig()
    threads = cfg.threads or os.cpu_count() or 1
    names = [v.name for v in variants]
    if evaluation is not None and reference not in names:
        raise BenchmarkError(reference, f"the parity reference is not among the variants {names}")
    for v in variants:
        if not Path(v.path).is_file():
            raise BenchmarkError(v.name, f"{v.path}: file not found")
    label_kind = _label_kind(evaluation) if evaluation is not None else None
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="pbf-bench-") as tmp:
        workdir = Path(tmp)
        results = _measure_rounds(variants, cfg, threads, workdir, evaluation, label_kind, progress)
        report = BenchmarkReport(
            machine={**machine, "loadavg_after": list(os.getloadavg())},
            config={**cfg.model_dump(mode="json"), "threads": threads},
            reference=reference,
            variants=[_variant_result(v, results[v.name], threads) for v in variants],
        )
        if evaluation is not None:
            _add_parity(report, workdir, quantize_cfg or QuantizeConfig(), label_kind)
    return report


def _measure_rounds(
    variants: Sequence[Variant],
    cfg: BenchmarkConfig,
    threads: int,
    workdir: Path,
    evaluation: EvalSet | None,
    label_kind: str | None,
    progress: Callable[[int, int], None] | None,
) -> dict[str, dict]:
    """Every variant measured ``cfg.rounds`` times in rotation; each keeps its fastest round
    (lowest batch-1 p50 at the first side)."""
    results: dict[str, dict] = {}
    total, done, first = cfg.rounds * len(variants), 0, str(cfg.sizes[0])
    for rnd in range(cfg.rounds):
        for v in variants:
            job = {
                "variant": v.name,
                "runtime": v.runtime,
                "path": str(v.path),
                "dynamic_int8": v.dynamic_int8,
                "threads": threads,
                "config": cfg.model_dump(mode="json"),
            }
            # Masks do not depend on the round: segment the evaluation set once.
            if evaluation is not None and rnd == 0:
                job["eval_root"] = str(evaluation.root)
                job["eval_ids"] = list(evaluation.ids)
                job["labels"] = label_kind
                job["masks_path"] = str(workdir / f"{v.name}.npz")
            res = _run_job(v, job, workdir, cfg.timeout_s)
            best = results.get(v.name)
            if best is None or res["latency"][first]["p50_ms"] < best["latency"][first]["p50_ms"]:
                results[v.name] = res
            done += 1
            if progress is not None:
                progress(done, total)
    return results


def _variant_result(v: Variant, measured: dict, threads: int) -> VariantResult:
    return VariantResult(
        name=v.name,
        runtime=v.runtime,
        file=str(v.path),
        size_mb=round(Path(v.path).stat().st_size / 1e6, 3),
        threads=threads,
        latency={k: Latency(**lat) for k, lat in measured["latency"].items()},
        throughput=measured["throughput"],
        rss_before_mb=measured["rss_before_mb"],
        peak_rss_mb=measured["peak_rss_mb"],
        load_s=measured["load_s"],
    )


def _label_kind(evaluation: EvalSet) -> str:
    """``truth`` when every evaluation layer has a true mask, else ``weak``."""
    from pbf_core.data.dataset import load_manifest

    wanted = set(evaluation.ids)
    entries = [e for e in load_manifest(evaluation.root).layers if e.id in wanted]
    missing = wanted - {e.id for e in entries}
    if missing:
        raise BenchmarkError("evaluation", f"{evaluation.root}: no layer(s) {sorted(missing)[:3]}")
    return "truth" if all(e.truth for e in entries) else "weak"


def _add_parity(
    report: BenchmarkReport, workdir: Path, qcfg: QuantizeConfig, label_kind: str
) -> None:
    def load(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        with np.load(workdir / f"{name}.npz") as data:
            ids = sorted(k[5:] for k in data.files if k.startswith("mask/"))
            return [data[f"mask/{i}"] for i in ids], [data[f"label/{i}"] for i in ids]

    reference, labels = load(report.reference)
    for res in report.variants:
        masks, _ = load(res.name)
        res.parity = check_parity(res.name, reference, masks, labels, qcfg, label_kind).to_dict()


def model_variants(
    checkpoint: str | Path, fp32_onnx: str | Path, int8_onnx: str | Path, baseline: bool = True
) -> list[Variant]:
    """The variants of one trained model (:data:`pbf_core.deploy.quantization.VARIANTS`).

    ``baseline`` adds the prototype's dynamic quantization, which changes nothing in a U-Net and
    is measured only to compare with what the prototype reported.
    """
    checkpoint = Path(checkpoint)
    variants = [
        Variant("torch-fp32", "torch", checkpoint),
        Variant("torch-dynamic-int8", "torch", checkpoint, dynamic_int8=True),
        Variant("onnx-fp32", "onnx", Path(fp32_onnx)),
        Variant("onnx-int8", "onnx", Path(int8_onnx)),
    ]
    return variants if baseline else [v for v in variants if not v.dynamic_int8]


def _onnx_is_current(path: Path, checkpoint: Path) -> bool:
    """``path`` exists and was made from this checkpoint (same spec creation time and digest)."""
    from pbf_core.deploy.metadata import read_metadata
    from pbf_core.model.checkpoints import read_spec

    if not path.is_file():
        return False
    spec, meta = read_spec(checkpoint), read_metadata(path)
    return (meta.get("created_at"), meta.get("train_data_digest")) == (
        spec.created_at,
        spec.train_data_digest,
    )


def onnx_files(
    checkpoint: str | Path,
    onnx_dir: str | Path,
    dataset: PreparedDataset | None = None,
    quantize_cfg: QuantizeConfig | None = None,
) -> tuple[Path, Path]:
    """The checkpoint's ``model.fp32.onnx`` and ``model.int8.onnx`` in ``onnx_dir``.

    Files made from another checkpoint (or none) are exported and quantized there by the
    pipeline's export and quantize steps, on ``dataset`` split as the checkpoint's
    ``split.json`` says.

    Raises:
        BenchmarkError: no current files and no dataset to make them.
    """
    from pbf_core.data.split import Split
    from pbf_core.deploy.export import export_model
    from pbf_core.deploy.quantization import quantize_model

    checkpoint, onnx_dir = Path(checkpoint), Path(onnx_dir)
    fp32, int8 = onnx_dir / "model.fp32.onnx", onnx_dir / "model.int8.onnx"
    if _onnx_is_current(fp32, checkpoint) and _onnx_is_current(int8, checkpoint):
        return fp32, int8
    if dataset is None:
        raise BenchmarkError(
            "onnx-int8",
            f"{onnx_dir} holds no model.fp32.onnx/model.int8.onnx made from {checkpoint}; "
            "pass the training data to export and quantize it",
        )
    split = Split.load(checkpoint.parent / "split.json")
    exported = export_model(checkpoint, fp32)
    quantize_model(exported, dataset.with_split(split), quantize_cfg or QuantizeConfig(), onnx_dir)
    return fp32, int8


def benchmark_model(
    checkpoint: str | Path,
    fp32: str | Path,
    int8: str | Path,
    out: str | Path,
    cfg: BenchmarkConfig | None = None,
    *,
    dataset: PreparedDataset | None = None,
    quantize_cfg: QuantizeConfig | None = None,
    baseline: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> BenchmarkReport:
    """Benchmark a trained model's variants in one run (the pipeline's benchmark step).

    Writes ``inference.json`` and ``inference.md`` into ``out``.

    Args:
        checkpoint: ``model.safetensors`` (the PyTorch variants and the reference).
        fp32, int8: its ONNX files.
        out: report directory.
        cfg: benchmark settings.
        dataset: with its split, every variant also segments the split's evaluation layers in
            its worker and is scored against the reference's masks (parity columns). The
            pipeline's parity gate is the quantize step's; this is a measurement.
        quantize_cfg: parity tolerances.
        baseline: also measure the prototype's dynamic quantization.
        progress: ``progress(done, total)`` after each measured variant.

    Raises:
        BenchmarkError: a missing file or a failed worker.
    """
    evaluation = None
    if dataset is not None:
        evaluation = EvalSet(dataset.path, tuple(dataset.require_split().eval_ids))
    variants = model_variants(checkpoint, fp32, int8, baseline)
    report = benchmark(variants, cfg, evaluation, quantize_cfg, progress)
    write_report(report, out)
    return report
