"""One variant's timed runs, in a fresh process started by :mod:`pbf_core.bench.runner`.

A worker records its resident set after importing its runtime and before loading the model, then
its peak (Linux ``VmHWM``) after the timed runs, the largest being the throughput batch at the
largest side: the difference is what the model and its activations cost. Only the standard
library and numpy are imported at module level; a worker imports the one runtime (``torch`` or
``onnxruntime``) its variant needs.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pbf_core.bench.report import Latency
from pbf_core.config import BenchmarkConfig
from pbf_core.files import write_json


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

        from pbf_core.deploy.export import INPUT_NAME
        from pbf_core.deploy.inference import onnx_predictor
        from pbf_core.deploy.metadata import read_metadata
        from pbf_core.deploy.runtimes import open_session

        rss = _rss_mb()
        session = open_session(job["path"], threads=threads)

        def forward(x: np.ndarray) -> np.ndarray:
            return session.run(None, {INPUT_NAME: x})[0]

        return forward, onnx_predictor(session), rss, read_metadata(job["path"])

    import torch

    from pbf_core.deploy.inference import torch_predictor
    from pbf_core.deploy.quantization import quantize_dynamic_torch
    from pbf_core.model.checkpoints import load_checkpoint

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
    from pbf_core.data.dataset import load_manifest, load_sample
    from pbf_core.deploy.tiling import mirror_average, predict_tiled

    def tiled(x: np.ndarray) -> np.ndarray:
        return predict_tiled(predict, x, spec["tile_size"], spec["tile_overlap"])

    root = Path(job["eval_root"])
    entries = {e.id: e for e in load_manifest(root).layers}
    arrays = {}
    for layer_id in job["eval_ids"]:
        sample = load_sample(root, entries[layer_id])
        prob = mirror_average(tiled, sample.image, bool(spec.get("flips", False)))
        arrays[f"mask/{layer_id}"] = prob >= spec["threshold"]
        arrays[f"label/{layer_id}"] = sample.truth if job["labels"] == "truth" else sample.weak
    np.savez_compressed(job["masks_path"], **arrays)
