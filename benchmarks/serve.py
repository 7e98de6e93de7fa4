"""Serving throughput and latency: the BentoML service against the prototype's naive handler.

Both serve the same model (the default U-Net, random weights unless ``--checkpoint`` is given:
speed does not depend on the weights) on the same 512x512 16-bit a/b/c uploads (synthetic
layers):

- ``naive-fp32-torch``: :mod:`naive_app` — FastAPI, fp32 PyTorch per request (the prototype's way);
- ``service-<variant>``: ``bentoml serve service:DefectService`` — the ONNX model in the request
  processes on OpenVINO (ONNX Runtime where OpenVINO is not installed), int8 by default; with
  ``--onnxruntime`` also ``service-<variant>-onnxruntime`` (``PBF_SERVE_RUNTIME=onnxruntime``),
  with ``--batching`` also ``service-<variant>-batched`` (``PBF_SERVE_BATCHING=true``: BentoML
  adaptive batching of tiles across requests).

Before the servers start it measures the int8 model's CPU time per tile by batch size (one
thread) and OpenVINO's masks against ONNX Runtime's on the upload layers.

All servers are started, then loaded in turn in interleaved rounds at concurrency 1 and 8, so
the machine's changing background load hits each alike. Reported: throughput (requests/s, median
over rounds) and p50/p95 latency (ms, over all requests), with the load average. Results go to
``benchmarks/results/serve.json`` and ``serve.md``. ``PBF_SERVE_*`` variables reach the service.

    python benchmarks/serve.py                       # int8 service vs naive fp32
    python benchmarks/serve.py --variants int8 fp32  # also the fp32 ONNX service
    python benchmarks/serve.py --onnxruntime --batching  # also both other layouts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the server-process helpers the tests use

from helpers.processes import ServerStartError, free_port, stop_tree, wait_ready  # noqa: E402

from pbf_core.deploy.metadata import read_onnx_spec  # noqa: E402

STARTUP_S = 300


def build_model(work: Path, checkpoint: Path | None, size: int) -> dict[str, Path]:
    """Checkpoint, fp32 ONNX and calibrated int8 ONNX of the benchmarked model."""
    import torch

    from pbf_core.config import QuantizeConfig, SynthConfig
    from pbf_core.data.synthetic import render_layer
    from pbf_core.deploy.export import export_onnx
    from pbf_core.deploy.inputs import prepare_input
    from pbf_core.deploy.metadata import spec_metadata
    from pbf_core.deploy.quantization import quantize_static
    from pbf_core.model.checkpoints import load_checkpoint, save_checkpoint
    from pbf_core.model.factory import create_model
    from pbf_core.model.spec import ModelSpec

    if checkpoint is None:
        torch.manual_seed(0)
        spec = ModelSpec(train_data_digest="benchmark-random-init")
        model = create_model(in_channels=spec.in_channels)
        checkpoint = save_checkpoint(work / "model.safetensors", model.eval(), spec)
    model, spec = load_checkpoint(checkpoint)
    fp32 = work / "fp32.onnx"
    export_onnx(
        model, fp32, in_channels=spec.in_channels, metadata=spec_metadata(spec, "onnx-fp32")
    )
    cfg = SynthConfig(size=size, seed=1)
    t = spec.tile_size
    tiles = []
    for z in range(4):
        x = prepare_input(render_layer(cfg, z).views, spec)
        tiles += [x[:, y : y + t, xx : xx + t] for y in (0, size - t) for xx in (0, size - t)]
    int8 = quantize_static(fp32, work / "int8.onnx", np.stack(tiles), QuantizeConfig())
    return {"checkpoint": Path(checkpoint), "fp32": fp32, "int8": int8}


def batch_sweep(onnx_path: Path, tile: int, sizes=(1, 3, 9, 18, 36)) -> dict[str, list[dict]]:
    """CPU time per tile of the model, one thread, by tiles per run, under each CPU runtime.

    Whether batching tiles across requests can pay on this CPU: it cannot when the cost per
    tile does not fall with the batch. Best of 3 rounds, each ~36 tiles; sigmoid included.
    """
    from pbf_core.deploy.runtimes import open_predictor, openvino_available

    rng = np.random.default_rng(0)
    out: dict[str, list[dict]] = {}
    for runtime in ("onnxruntime", "openvino") if openvino_available() else ("onnxruntime",):
        rows = []
        for n in sizes:
            predict, _ = open_predictor(onnx_path, runtime, 1, chunk=n)
            x = rng.random((n, 3, tile, tile), dtype=np.float32)
            predict(x)
            runs = max(1, 36 // n)
            best = float("inf")
            for _ in range(3):
                t0 = time.process_time()
                for _ in range(runs):
                    predict(x)
                best = min(best, (time.process_time() - t0) / (runs * n))
            rows.append({"tiles_per_run": n, "cpu_ms_per_tile": round(1000 * best, 2)})
        out[runtime] = rows
    return out


def runtime_parity(onnx_path: Path, size: int, count: int) -> dict | None:
    """OpenVINO's masks and probabilities against ONNX Runtime's on the benchmark's layers.

    None when OpenVINO is not installed. Dice 1.0 means identical masks.
    """
    from pbf_core.config import SynthConfig
    from pbf_core.data.synthetic import render_layer
    from pbf_core.deploy.inputs import prepare_input
    from pbf_core.deploy.runtimes import open_predictor, openvino_available
    from pbf_core.deploy.tiling import predict_tiled

    if not openvino_available():
        return None
    spec = read_onnx_spec(onnx_path)
    ov, _ = open_predictor(onnx_path, "openvino", 1)
    ort, _ = open_predictor(onnx_path, "onnxruntime", 1)
    cfg = SynthConfig(size=size, seed=2)
    dice, diffs, pixels = [], [], 0
    for z in range(count):
        x = prepare_input(render_layer(cfg, z).views, spec)
        a = predict_tiled(ov, x, spec.tile_size, spec.tile_overlap, 3)
        b = predict_tiled(ort, x, spec.tile_size, spec.tile_overlap, 3)
        ma, mb = a >= spec.threshold, b >= spec.threshold
        total = int(ma.sum() + mb.sum())
        dice.append(1.0 if total == 0 else 2.0 * float((ma & mb).sum()) / total)
        diffs.append(float(np.abs(a - b).mean()))
        pixels += int((ma != mb).sum())
    return {
        "layers": count,
        "mask_dice_mean": round(statistics.fmean(dice), 5),
        "mask_dice_min": round(min(dice), 5),
        "pixels_differing": pixels,
        "prob_mean_abs_diff": round(statistics.fmean(diffs), 6),
    }


def uploads(size: int, count: int) -> list[dict[str, tuple[str, bytes, str]]]:
    """``count`` different synthetic layers as multipart a/b/c 16-bit PNGs."""
    import cv2

    from pbf_core.config import SynthConfig
    from pbf_core.data.synthetic import render_layer

    cfg = SynthConfig(size=size, seed=2)
    out = []
    for z in range(count):
        views = render_layer(cfg, z).views
        out.append(
            {
                v: (f"L{z:04d}{v}.png", cv2.imencode(".png", views[i])[1].tobytes(), "image/png")
                for i, v in enumerate("abc")
            }
        )
    return out


def package_model(files: dict[str, Path], home: Path) -> Path:
    """``pbf package`` of :func:`build_model`'s int8 and fp32 files into the BentoML store at
    ``home``; returns ``home``."""
    cmd = [sys.executable, "-m", "flows.cli", "package"]
    cmd += ["--int8", str(files["int8"]), "--fp32", str(files["fp32"])]
    done = subprocess.run(
        cmd, cwd=REPO, env=_env(BENTOML_HOME=str(home)), capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    return home


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # PBF_SERVE_* settings pass through (threads, workers, batching)
    env.update(PYTHONPATH=str(REPO), BENTOML_DO_NOT_TRACK="True", **extra)
    return env


def _start(cmd: list[str], env: dict, ready_url: str, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(ready_url, proc, log, STARTUP_S)
    except ServerStartError:
        stop_tree(proc)
        raise
    return proc


def encode_forms(files: list[dict]) -> list[tuple[bytes, dict[str, str]]]:
    """Each upload as a ready multipart body and its headers.

    Encoded once, before the clock starts: the load generator shares the cores with the servers,
    and the faster a server, the more of them per-request client work would take from it.
    """
    import httpx

    out = []
    for form in files:
        request = httpx.Request("POST", "http://localhost/", files=form)
        headers = {k: v for k, v in request.headers.items() if k.lower() == "content-type"}
        out.append((request.read(), headers))
    return out


def _shoot(
    url: str, forms: list[tuple[bytes, dict[str, str]]], concurrency: int, requests: int
) -> tuple[list, list, float, float]:
    """``requests`` POSTs from ``concurrency`` threads, each on its own keep-alive connection.

    The standard library's ``http.client`` is the client: it costs the shared cores about a
    third of httpx's CPU per request (2.3 MB through each request and answer).

    Returns:
        Latencies (s), errors, wall time (s) and this (client) process's CPU time (s).
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    latencies: list[float] = []
    errors: list[str] = []

    def worker(jobs: list[int]) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
        try:
            for i in jobs:
                t0 = time.perf_counter()
                content, headers = forms[i % len(forms)]
                try:
                    conn.request("POST", parts.path, body=content, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                except (OSError, http.client.HTTPException) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()  # reconnects on the next request
                    continue
                finally:
                    latencies.append(time.perf_counter() - t0)
                if answer.status != 200:
                    errors.append(f"{answer.status}: {data[:200]!r}")
        finally:
            conn.close()

    threads = [
        threading.Thread(target=worker, args=(list(range(k, requests, concurrency)),))
        for k in range(concurrency)
    ]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - t0, time.process_time() - cpu0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time (s) of a server process and all its children (workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure(
    targets: dict[str, str], pids: dict[str, int], forms: list[tuple[bytes, dict]], args
) -> dict[str, list[dict]]:
    """Interleaved rounds: each round loads every target in turn at each concurrency.

    All servers stay up (an idle one costs nothing), so a change in the machine's background
    load hits every target alike instead of whichever happened to run last. Throughput is the
    median over rounds; latency percentiles pool every request of the rounds.
    """
    for url in targets.values():
        _shoot(url, forms, max(args.concurrency), args.warmup)
    out: dict[str, list[dict]] = {name: [] for name in targets}
    for c in args.concurrency:
        requests = args.requests if c > 1 else args.requests_c1
        runs: dict[str, list] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, url in targets.items():
                load_before = os.getloadavg()[0]
                cpu_before = _cpu_seconds(pids[name])
                lat, errs, wall, client_cpu = _shoot(url, forms, c, requests)
                cpu = _cpu_seconds(pids[name]) - cpu_before
                runs[name].append(
                    (lat, errs, wall, load_before, cpu / requests, client_cpu / requests)
                )
        for name, rounds in runs.items():
            ms = np.array([lat for r in rounds for lat in r[0]]) * 1000.0
            rps = [requests / r[2] for r in rounds]
            errors = [e for r in rounds for e in r[1]]
            row = {
                "concurrency": c,
                "requests": requests * len(rounds),
                "rounds": len(rounds),
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
                "throughput_rps": round(statistics.median(rps), 3),
                "throughput_rps_rounds": [round(x, 3) for x in rps],
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p95_ms": round(float(np.percentile(ms, 95)), 1),
                "mean_ms": round(statistics.fmean(ms), 1),
                "loadavg_1m_before": round(statistics.fmean(r[3] for r in rounds), 2),
                # CPU the server spent per request: unlike wall-clock throughput, it hardly
                # depends on what else runs on the machine.
                "server_cpu_ms_per_request": round(
                    1000 * statistics.median(r[4] for r in rounds), 1
                ),
                "client_cpu_ms_per_request": round(
                    1000 * statistics.median(r[5] for r in rounds), 1
                ),
            }
            out[name].append(row)
            print(
                f"{name:>18} c={c}: {row['throughput_rps']:.2f} req/s (rounds "
                f"{row['throughput_rps_rounds']}), p50 {row['p50_ms']:.0f} ms, "
                f"p95 {row['p95_ms']:.0f} ms, errors {row['errors']}",
                flush=True,
            )
    return out


def markdown(report: dict) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"{report['when']} on {report['machine']['cpu_count']} CPU cores "
        f"({report['machine']['processor'] or report['machine']['machine']}), "
        f"load average before: {report['machine']['loadavg_start']}. "
        f"{report['upload']}; model: {report['model']}.",
        "",
        "| server | concurrency | requests | throughput (req/s) | p50 (ms) | p95 (ms) | errors "
        "| server CPU per request (ms) | client CPU per request (ms) | load avg 1m |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target in report["targets"]:
        for r in target["results"]:
            lines.append(
                f"| {target['name']} | {r['concurrency']} | {r['requests']} | "
                f"{r['throughput_rps']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                f"{r['errors']} | {r['server_cpu_ms_per_request']:.0f} | "
                f"{r.get('client_cpu_ms_per_request', float('nan')):.0f} | "
                f"{r['loadavg_1m_before']:.2f} |"
            )
    lines += ["", "Throughput relative to the naive fp32 handler at the same concurrency:", ""]
    for c, ratios in report["speedup"].items():
        lines.append(f"- concurrency {c}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    lines += [
        "",
        "CPU per request of the naive handler over the service's (how many times more requests "
        "the same cores serve when nothing else competes for them):",
        "",
    ]
    for c, ratios in report["cpu_speedup"].items():
        lines.append(f"- concurrency {c}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    sweep = report.get("int8_batch_sweep")
    if sweep:
        first = next(iter(sweep["results"].values()))
        lines += [
            "",
            f"int8 model alone, one thread, {sweep['tile']}² tiles: CPU ms per tile by tiles per "
            "run (batching across requests pays only if this falls):",
            "",
            "| runtime | " + " | ".join(str(r["tiles_per_run"]) for r in first) + " |",
            "| --- |" + " ---: |" * len(first),
        ]
        for runtime, rows in sweep["results"].items():
            cells = " | ".join(f"{r['cpu_ms_per_tile']:.2f}" for r in rows)
            lines.append(f"| {runtime} | {cells} |")
    parity = report.get("int8_runtime_parity")
    if parity:
        lines += [
            "",
            f"int8 model, OpenVINO vs ONNX Runtime on the {parity['layers']} upload layers: "
            f"mask Dice {parity['mask_dice_mean']:.4f} (lowest {parity['mask_dice_min']:.4f}), "
            f"{parity['pixels_differing']} pixels differ in all, mean |probability difference| "
            f"{parity['prob_mean_abs_diff']:.5f}.",
        ]
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="trained checkpoint (default: random init)")
    parser.add_argument("--size", type=int, default=512, help="upload width and height (px)")
    parser.add_argument("--requests", type=int, default=24, help="requests per round (c > 1)")
    parser.add_argument("--requests-c1", type=int, default=8, help="requests per round (c = 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--variants", nargs="+", default=["int8"], choices=["int8", "fp32"])
    parser.add_argument(
        "--batching",
        action="store_true",
        help="also serve each variant with PBF_SERVE_BATCHING=true (service-<variant>-batched)",
    )
    parser.add_argument(
        "--onnxruntime",
        action="store_true",
        help="also serve each variant with PBF_SERVE_RUNTIME=onnxruntime "
        "(service-<variant>-onnxruntime; the default takes OpenVINO when installed)",
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def start_naive(files: dict[str, Path], work: Path) -> tuple[subprocess.Popen, str]:
    """The naive FastAPI handler (fp32 PyTorch) on a free port; its process and segment URL."""
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("uvicorn")), "--app-dir", "benchmarks"]
    cmd += ["naive_app:app", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--log-level", "warning"]
    env = _env(PBF_NAIVE_CHECKPOINT=str(files["checkpoint"]))
    base = f"http://127.0.0.1:{port}"
    return _start(cmd, env, f"{base}/docs", work / "naive.log"), f"{base}/segment"


def service_layouts(args: argparse.Namespace) -> list[tuple[str, str, str, bool]]:
    """``(name, variant, runtime, batching)`` of every service layout the arguments ask for."""
    layouts = [("auto", False)]
    layouts += [("onnxruntime", False)] if args.onnxruntime else []
    layouts += [("auto", True)] if args.batching else []
    out = []
    for variant, (runtime, batching) in [(v, m) for v in args.variants for m in layouts]:
        name = f"service-{variant}" + ("-batched" if batching else "")
        name += "-onnxruntime" if runtime == "onnxruntime" else ""
        out.append((name, variant, runtime, batching))
    return out


def start_bentoml(home: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """``bentoml serve`` of the service from ``home`` on a free port (this environment's
    ``PBF_SERVE_*`` settings, then ``env``); its process and base URL once ``/readyz`` answers."""
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("bentoml")), "serve"]
    cmd += ["service:DefectService", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    return _start(cmd, _env(BENTOML_HOME=str(home), **env), f"{base}/readyz", log), base


def start_service(
    home: Path, work: Path, name: str, variant: str, runtime: str, batching: bool
) -> tuple[subprocess.Popen, str]:
    """One measured layout of the service; its process and segment URL."""
    proc, base = start_bentoml(
        home,
        work / f"{name}.log",
        PBF_SERVE_VARIANT=variant,
        PBF_SERVE_BATCHING=str(batching).lower(),
        PBF_SERVE_RUNTIME=runtime,
    )
    return proc, f"{base}/segment"


def serve_and_measure(args, files: dict[str, Path], home: Path, work: Path, bodies) -> list[dict]:
    """Start every server at once, load them in interleaved rounds, stop them; one target each."""
    procs: list[subprocess.Popen] = []
    urls: dict[str, str] = {}
    pids: dict[str, int] = {}
    starts = [] if args.skip_naive else [("naive-fp32-torch", lambda: start_naive(files, work))]
    starts += [
        (layout[0], lambda layout=layout: start_service(home, work, *layout))
        for layout in service_layouts(args)
    ]
    try:
        for name, start in starts:
            proc, urls[name] = start()
            procs.append(proc)
            pids[name] = proc.pid
        measured = measure(urls, pids, bodies, args)
    finally:
        for proc in procs:
            stop_tree(proc)
    return [{"name": name, "results": rows} for name, rows in measured.items()]


def speedups(targets: list[dict]) -> tuple[dict, dict]:
    """Throughput and server-CPU ratios of every target to the naive handler, per concurrency."""
    naive = next((t for t in targets if t["name"] == "naive-fp32-torch"), None)
    speedup: dict[str, dict[str, float]] = {}
    cpu_speedup: dict[str, dict[str, float]] = {}
    if naive is None:
        return speedup, cpu_speedup
    base_rps = {r["concurrency"]: r["throughput_rps"] for r in naive["results"]}
    base_cpu = {r["concurrency"]: r["server_cpu_ms_per_request"] for r in naive["results"]}
    for t in (t for t in targets if t is not naive):
        for r in t["results"]:
            c = r["concurrency"]
            speedup.setdefault(str(c), {})[t["name"]] = round(r["throughput_rps"] / base_rps[c], 2)
            cpu_speedup.setdefault(str(c), {})[t["name"]] = round(
                base_cpu[c] / r["server_cpu_ms_per_request"], 2
            )
    return speedup, cpu_speedup


NOTE = (
    "All servers are up at once and loaded in turn, in interleaved rounds (throughput: "
    "median over rounds; p50/p95 over all requests); the load generator runs on the same "
    "machine. The naive handler does the same work per request (decode, normalise, tile, "
    "stitch, components, overlay and mask PNGs) with the fp32 PyTorch model; the service "
    "runs the ONNX model (OpenVINO; *-onnxruntime: ONNX Runtime) in its request "
    "processes (one per core, one thread per inference, glibc keeping freed memory for "
    "the next request; *-batched: in separate processes behind BentoML adaptive batching "
    "of tiles across requests). The client bodies are encoded before timing. Other "
    "processes on the machine (see the load average) make absolute numbers noisy; "
    "compare rows of one run."
)


def main() -> None:
    args = parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="pbf-bench-serve-") as tmp:
        work = Path(tmp)
        print("building the model (export, int8 calibration)...", flush=True)
        files = build_model(work, args.checkpoint, args.size)
        home = package_model(files, work / "bentoml")
        print("int8 cost per tile by batch size...", flush=True)
        tile = read_onnx_spec(files["int8"]).tile_size
        sweep = batch_sweep(files["int8"], tile)
        print("OpenVINO vs ONNX Runtime on the uploads' layers...", flush=True)
        parity = runtime_parity(files["int8"], args.size, 8)
        bodies = encode_forms(uploads(args.size, 8))
        targets = serve_and_measure(args, files, home, work, bodies)
    speedup, cpu_speedup = speedups(targets)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor(),
            "machine": platform.machine(),
            "loadavg_start": load_start,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "upload": f"{args.size}x{args.size} 16-bit PNG a/b/c triplets (synthetic layers)",
        "model": "U-Net mobilenet_v2 (ModelSpec defaults: tile 256, overlap 32)"
        + (f", {args.checkpoint}" if args.checkpoint else ", random init"),
        "targets": targets,
        "speedup": speedup,
        "cpu_speedup": cpu_speedup,
        "int8_batch_sweep": {"tile": tile, "threads": 1, "results": sweep},
        "int8_runtime_parity": parity,
        "note": NOTE,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "serve.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
