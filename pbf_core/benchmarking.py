"""Inference benchmark of model variants: latency, throughput, size on disk, peak memory, parity.

Each variant is measured in its own fresh Python process (:func:`run_worker`), so one runtime's
thread pools, allocator caches and imports never weigh on another's numbers, and its peak resident
memory is its own. A worker records its resident set after importing its runtime and before loading
the model, then its peak (Linux ``VmHWM``) after the timed runs, the largest being batch 8 at the
largest side: the difference is what the model and its activations cost. With ``rounds > 1`` the
variants are measured in rotation several times and each keeps its round with the lowest batch-1
p50 at the first side (all of that round's numbers), which damps bursts of load from other
processes on a shared machine; the load average before and after is recorded beside the numbers.

Only the standard library and numpy are imported at module level; each worker imports the one
runtime (``torch`` or ``onnxruntime``) its variant needs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pbf_core.config import BenchmarkConfig, QuantizeConfig
from pbf_core.datasets import write_json
from pbf_core.errors import PbfError
from pbf_core.quantization import REFERENCE_VARIANT, check_parity

Runtime = Literal["torch", "onnx"]


class BenchmarkError(PbfError, RuntimeError):
    """A variant could not be benchmarked (its worker failed); names the variant and the cause."""

    def __init__(self, variant: str, reason: str) -> None:
        self.variant = variant
        self.reason = reason
        super().__init__(f"{variant}: {reason}")


@dataclass(frozen=True)
class Variant:
    """A model file and how to run it.

    Attributes:
        name: e.g. ``torch-fp32`` (see :data:`pbf_core.quantization.VARIANTS`).
        runtime: ``torch`` (a checkpoint from :func:`pbf_core.models.save_checkpoint`) or
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


def measure_latency(run: Callable[[], object], warmup: int, iterations: int) -> Latency:
    """Time ``run()`` ``iterations`` times after ``warmup`` untimed calls.

    Returns:
        p50, p95, min and mean wall time in ms.
    """
    for _ in range(warmup):
        run()
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        run()
        times[i] = time.perf_counter() - start
    ms = times * 1e3
    return Latency(
        p50_ms=round(float(np.percentile(ms, 50)), 2),
        p95_ms=round(float(np.percentile(ms, 95)), 2),
        min_ms=round(float(ms.min()), 2),
        mean_ms=round(float(ms.mean()), 2),
        iterations=iterations,
    )


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` in MB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_mb() -> float:
    """Current resident set of this process (MB); off Linux, the peak so far."""
    return _proc_status_mb("VmRSS") or _peak_rss_mb()


def _peak_rss_mb() -> float:
    """Peak resident set of this process (MB).

    Linux's ``VmHWM`` belongs to this process image; ``ru_maxrss`` is not used there because a
    child started by fork + exec inherits its parent's high-water mark.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and BSD, in bytes on macOS.
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def _load_runner(job: dict, threads: int) -> tuple[Callable, Callable, float, dict]:
    """Import the variant's runtime, record RSS, load the model.

    Returns:
        ``(forward, predict, rss_before_mb, spec)``: ``forward`` maps ``(N, C, H, W) float32`` to
        logits (what is timed), ``predict`` to probabilities (a
        :data:`pbf_core.inference.PredictFn`, used for parity); ``spec`` is the model's spec dict.
    """
    if job["runtime"] == "onnx":
        import onnxruntime  # noqa: F401  (imported before the RSS baseline on purpose)

        from pbf_core.export import INPUT_NAME, open_session, read_metadata
        from pbf_core.inference import onnx_predictor

        rss = _rss_mb()
        session = open_session(job["path"], threads=threads)

        def forward(x: np.ndarray) -> np.ndarray:
            return session.run(None, {INPUT_NAME: x})[0]

        return forward, onnx_predictor(session), rss, read_metadata(job["path"])

    import torch

    from pbf_core.inference import torch_predictor
    from pbf_core.models import load_checkpoint
    from pbf_core.quantization import quantize_dynamic_torch

    torch.set_num_threads(threads)
    rss = _rss_mb()
    model, spec = load_checkpoint(job["path"])
    if job["dynamic_int8"]:
        model = quantize_dynamic_torch(model)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return forward, torch_predictor(model), rss, spec.model_dump(mode="json")


def run_worker(job_path: str | Path, result_path: str | Path) -> None:
    """Benchmark one variant in this process (meant to be a fresh one); see :func:`benchmark`.

    Reads the job JSON written by :func:`benchmark`, writes the result JSON, and the variant's
    masks of the evaluation layers as ``.npz`` when the job names an evaluation set.
    """
    job = json.loads(Path(job_path).read_text())
    cfg = BenchmarkConfig.model_validate(job["config"])
    threads = job["threads"]
    started = time.perf_counter()
    forward, predict, rss_before, spec = _load_runner(job, threads)
    load_s = time.perf_counter() - started
    channels = int(spec["in_channels"])
    rng = np.random.default_rng(0)
    latency, throughput = {}, {}
    for side in cfg.sizes:
        x1 = rng.random((cfg.batch, channels, side, side), dtype=np.float32)
        latency[str(side)] = asdict(
            measure_latency(lambda x=x1: forward(x), cfg.warmup, cfg.iterations)
        )
    for side in cfg.sizes:
        xb = rng.random((cfg.throughput_batch, channels, side, side), dtype=np.float32)
        lat = measure_latency(lambda x=xb: forward(x), 1, cfg.throughput_iterations)
        throughput[str(side)] = round(cfg.throughput_batch / (lat.p50_ms / 1e3), 2)
    peak = _peak_rss_mb()
    if job.get("eval_root"):
        _write_masks(predict, spec, job)
    write_json(
        result_path,
        {
            "latency": latency,
            "throughput": throughput,
            "rss_before_mb": round(rss_before, 1),
            "peak_rss_mb": round(peak, 1),
            "load_s": round(load_s, 3),
        },
    )


def _write_masks(predict: Callable, spec: dict, job: dict) -> None:
    """Segment the evaluation layers as serving does; save masks and labels as npz."""
    from pbf_core.datasets import load_manifest, load_sample
    from pbf_core.inference import predict_tiled

    root = Path(job["eval_root"])
    entries = {e.id: e for e in load_manifest(root).layers}
    arrays = {}
    for layer_id in job["eval_ids"]:
        sample = load_sample(root, entries[layer_id])
        prob = predict_tiled(predict, sample.image, spec["tile_size"], spec["tile_overlap"])
        arrays[f"mask/{layer_id}"] = prob >= spec["threshold"]
        arrays[f"label/{layer_id}"] = sample.truth if job["labels"] == "truth" else sample.weak
    np.savez_compressed(job["masks_path"], **arrays)


def machine_info() -> dict[str, Any]:
    """CPU model, core count, OS, Python and runtime versions, current load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("torch", "onnxruntime", "onnx", "segmentation_models_pytorch"):
        try:
            from importlib.metadata import version

            versions[mod] = version(
                mod if mod != "segmentation_models_pytorch" else "segmentation-models-pytorch"
            )
        except Exception:
            versions[mod] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _run_job(variant: Variant, job: dict, workdir: Path, timeout_s: float) -> dict:
    tag = f"{variant.name}-{int(time.time() * 1e6)}"
    job_path, result_path = workdir / f"{tag}.job.json", workdir / f"{tag}.result.json"
    write_json(job_path, job)
    threads = str(job["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    code = "import sys; from pbf_core.benchmarking import run_worker; run_worker(*sys.argv[1:3])"
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
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pbf-bench-") as tmp:
        workdir = Path(tmp)
        total, done = cfg.rounds * len(variants), 0
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
                first = str(cfg.sizes[0])
                best = results.get(v.name)
                if best is None or (
                    res["latency"][first]["p50_ms"] < best["latency"][first]["p50_ms"]
                ):
                    results[v.name] = res
                done += 1
                if progress is not None:
                    progress(done, total)
        report = BenchmarkReport(
            machine={**machine, "loadavg_after": list(os.getloadavg())},
            config={**cfg.model_dump(mode="json"), "threads": threads},
            reference=reference,
            variants=[
                VariantResult(
                    name=v.name,
                    runtime=v.runtime,
                    file=str(v.path),
                    size_mb=round(Path(v.path).stat().st_size / 1e6, 3),
                    threads=threads,
                    latency={k: Latency(**lat) for k, lat in results[v.name]["latency"].items()},
                    throughput=results[v.name]["throughput"],
                    rss_before_mb=results[v.name]["rss_before_mb"],
                    peak_rss_mb=results[v.name]["peak_rss_mb"],
                    load_s=results[v.name]["load_s"],
                )
                for v in variants
            ],
        )
        if evaluation is not None:
            _add_parity(report, workdir, quantize_cfg or QuantizeConfig(), label_kind)
    return report


def _label_kind(evaluation: EvalSet) -> str:
    """``truth`` when every evaluation layer has a true mask, else ``weak``."""
    from pbf_core.datasets import load_manifest

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


def model_variants(
    checkpoint: str | Path, fp32_onnx: str | Path, int8_onnx: str | Path
) -> list[Variant]:
    """The four variants of :data:`pbf_core.quantization.VARIANTS` for one trained model."""
    checkpoint = Path(checkpoint)
    return [
        Variant("torch-fp32", "torch", checkpoint),
        Variant("torch-dynamic-int8", "torch", checkpoint, dynamic_int8=True),
        Variant("onnx-fp32", "onnx", Path(fp32_onnx)),
        Variant("onnx-int8", "onnx", Path(int8_onnx)),
    ]


def _onnx_is_current(path: Path, checkpoint: Path) -> bool:
    """``path`` exists and was made from this checkpoint (same spec creation time and digest)."""
    from pbf_core.export import read_metadata
    from pbf_core.models import read_spec

    if not path.is_file():
        return False
    spec, meta = read_spec(checkpoint), read_metadata(path)
    return (meta.get("created_at"), meta.get("train_data_digest")) == (
        spec.created_at,
        spec.train_data_digest,
    )


def benchmark_model(
    checkpoint: str | Path,
    out: str | Path,
    data: str | Path | None = None,
    onnx_dir: str | Path | None = None,
    cfg: BenchmarkConfig | None = None,
    quantize_cfg: QuantizeConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BenchmarkReport:
    """Benchmark a trained model's four variants in one run and write the report into ``out``.

    The ONNX files are taken from ``onnx_dir`` (``pbf quantize`` output; default
    ``out/onnx``) when they were made from this checkpoint, else exported and quantized there
    with ``data`` (see :func:`pbf_core.quantization.quantize_model`).

    Args:
        checkpoint: ``model.safetensors``.
        out: directory for ``inference.json`` and ``inference.md``.
        data: the prepared dataset the model was trained on: calibration (train layers) and
            parity (test layers). Without it, parity is skipped and the ONNX files must exist.
        onnx_dir: where ``model.fp32.onnx`` and ``model.int8.onnx`` are (or are written).
        cfg: benchmark settings.
        quantize_cfg: calibration settings and parity tolerances.
        progress: ``progress(done, total)`` after each measured variant.

    Raises:
        BenchmarkError: no usable ONNX files and no data to make them, or a worker failed.
    """
    from pbf_core.quantization import load_split, quantize_model

    checkpoint, out = Path(checkpoint), Path(out)
    onnx_dir = Path(onnx_dir) if onnx_dir is not None else out / "onnx"
    fp32, int8 = onnx_dir / "model.fp32.onnx", onnx_dir / "model.int8.onnx"
    if not (_onnx_is_current(fp32, checkpoint) and _onnx_is_current(int8, checkpoint)):
        if data is None:
            raise BenchmarkError(
                "onnx-int8",
                f"{onnx_dir} holds no model.fp32.onnx/model.int8.onnx made from {checkpoint}; "
                "pass the training data to export and quantize it",
            )
        quantize_model(checkpoint, data, onnx_dir, quantize_cfg)
    evaluation = None
    if data is not None:
        split = load_split(checkpoint, data)
        evaluation = EvalSet(Path(data), tuple(split.get("test") or split["val"]))
    report = benchmark(
        model_variants(checkpoint, fp32, int8), cfg, evaluation, quantize_cfg, progress
    )
    write_report(report, out)
    return report
