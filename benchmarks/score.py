"""Build scoring scale-out: the same build scored by every runner side by side, in one run.

    python benchmarks/score.py --model .pbf/runs/<run>/onnx/model.int8.onnx [--layers 200]

Scores a synthetic build (``--layers`` layers of 512², true masks, 10 pore columns per 100
layers) with: one process on one
thread, one process on every core, a Dask ``LocalCluster`` of 1 and of 2 workers, and a cluster
started as separate ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1. Each
configuration scores from scratch into its own directory. Reports layers/s, the speed-up over
one Dask worker and peak RSS per process (workers' own ``ru_maxrss``), plus how well the layer
verdicts match the truth (layers with a true defect of ≥ 20 px found; defect-free layers
flagged; the generator's 3D defects found as one joined defect). Writes ``benchmarks/results/score.json`` and ``score.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from queue import Empty

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(RESULTS.parents[1] / "tests"))  # the server-process helpers the tests use
from helpers.processes import dask_cluster  # noqa: E402


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="int8 ONNX (or any model file)")
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--work", type=Path, default=Path(".pbf/bench-score"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args()


def _timed(build: str, model: str, out: str, runner) -> dict:
    """``score_build``'s steps, timed apart: the layers mapped over the runner, then the serial
    end (3D joining, tables, report)."""
    from pbf_core.scoring.build import ScoringModel, discover_build, finish_build
    from pbf_core.scoring.runners import map_layers

    start, out_dir = time.perf_counter(), Path(out)
    found = discover_build(build, out_dir)
    scoring = ScoringModel.open(model)
    t0 = time.perf_counter()
    layers = map_layers(found.source.records, found.digests, model, out_dir, scoring.key, runner)
    t1 = time.perf_counter()
    result = finish_build(build, scoring, out_dir, layers, found.source.records)
    end = time.perf_counter()
    return {"seconds": end - start, "map_s": t1 - t0, "finish_s": end - t1,
            "layers": len(result.layers), "scored": result.scored,
            "flagged": list(result.flagged)}  # fmt: skip


def _score(build: str, model: str, out: str, how: dict, queue) -> None:
    """In a fresh process: score the build on ``how``; seconds and peak RSS of this process and
    of every Dask worker."""
    from distributed import Client, LocalCluster

    from pbf_core.bench.machine import peak_rss_mb
    from pbf_core.scoring.runners import Runner

    if how["kind"] == "local":
        row = _timed(build, model, out, Runner("local", threads=how["threads"]))
        queue.put({**row, "peak_mb": peak_rss_mb(), "worker_peak_mb": []})
        return
    cluster = None
    address = how.get("address")
    if address is None:
        cluster = LocalCluster(n_workers=how["workers"], threads_per_worker=1, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", processes=True)  # fmt: skip
        address = cluster.scheduler_address
    row = _timed(build, model, out, Runner("dask", address=address))
    with Client(address) as client:
        workers = list(client.run(peak_rss_mb).values())
    if cluster is not None:
        cluster.close()
    queue.put({**row, "peak_mb": peak_rss_mb(), "worker_peak_mb": workers})


def _run(build: Path, model: Path, out: Path, how: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_score, args=(str(build), str(model), str(out), how, queue))
    proc.start()
    while True:  # a child that dies must not leave this waiting
        try:
            row = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"scoring on {how} failed (exit {proc.exitcode})") from None
    proc.join()
    return row


def _verdicts(build: Path, flagged: set[str]) -> dict:
    """Layer verdicts against the truth: layers with a true defect of >= 20 px, and clean ones."""
    import cv2
    import numpy as np

    from pbf_core.data.imaging import read_mask

    manifest = json.loads((build / "manifest.json").read_text())
    defective, clean = [], []
    for entry in manifest["layers"]:
        if entry.get("kind") != "layer":
            continue
        truth = read_mask(build / "truth" / f"{entry['id']}.png")
        stats = cv2.connectedComponentsWithStats(truth.astype(np.uint8), connectivity=8)[2]
        (defective if (stats[1:, 4] >= 20).any() else clean).append(entry["id"])
    found = sum(lid in flagged for lid in defective)
    false = sum(lid in flagged for lid in clean)
    return {"defective_layers": len(defective), "found": found, "clean_layers": len(clean),
            "clean_flagged": false}  # fmt: skip


CONFIGS = {
    "one process, 1 thread": {"kind": "local", "threads": 1},
    "one process, every core": {"kind": "local", "threads": None},
    "Dask LocalCluster, 1 worker": {"kind": "dask", "workers": 1},
    "Dask LocalCluster, 2 workers": {"kind": "dask", "workers": 2},
    "dask scheduler + 2 dask worker processes": {"kind": "dask", "separate": 2},
}


def main() -> None:
    args = _arguments()
    from pbf_core.bench.machine import machine_info
    from pbf_core.config import SynthConfig
    from pbf_core.data.synthetic import generate_build

    build = args.work / "build"
    if not (build / "manifest.json").is_file():
        cfg = SynthConfig(layers=args.layers, size=args.size, seed=500, volume_defects=10)
        generate_build(build, cfg)
    rows = {}
    for name, how in CONFIGS.items():
        out = args.work / name.replace(" ", "-").replace(",", "")
        with contextlib.ExitStack() as stack:
            if "separate" in how:
                cluster = dask_cluster(BIN, args.work, how["separate"], timeout_s=120)
                how = {"kind": "dask", "address": stack.enter_context(cluster)}
            rows[name] = _run(build, args.model, out, how)
        rows[name]["layers_per_s"] = rows[name]["scored"] / rows[name]["seconds"]
        rows[name]["mapped_layers_per_s"] = rows[name]["scored"] / rows[name]["map_s"]
        print(name, json.dumps({k: v for k, v in rows[name].items() if k != "flagged"}))
    _write(args, rows, build, machine_info())


def _volumes_found(build: Path, scored: Path) -> dict:
    """How many of the generator's 3D defects come back as one joined 3D defect: one whose
    layers cover the volume's and whose box overlaps each of its slices."""
    import pyarrow.parquet as pq

    manifest = json.loads((build / "manifest.json").read_text())
    height = {i: e["z"] for i, e in enumerate(manifest["layers"])}  # frame index -> layer
    slices: dict[int, list] = {}
    for e in manifest["layers"]:
        for d in e.get("defects", []):
            if "volume" in d:
                slices.setdefault(d["volume"], []).append((e["z"], d["bbox"]))
    found = pq.read_table(scored / "defects.parquet").to_pylist()

    def covers(d, z, box):
        return (height[d["z_min"]] <= z <= height[d["z_max"]] and d["x0"] < box[2]
                and box[0] < d["x1"] and d["y0"] < box[3] and box[1] < d["y1"])  # fmt: skip

    matched = sum(
        any(all(covers(d, z, box) for z, box in parts) for d in found) for parts in slices.values()
    )
    return {"volumes": len(slices), "matched": matched, "predicted_3d_defects": len(found)}


def _write(args, rows: dict, build: Path, machine: dict) -> None:
    base = rows["Dask LocalCluster, 1 worker"]["layers_per_s"]
    base_map = rows["Dask LocalCluster, 1 worker"]["mapped_layers_per_s"]
    verdicts = _verdicts(build, set(rows["one process, every core"]["flagged"]))
    verdicts.update(_volumes_found(build, args.work / "one-process-every-core"))
    result = {"model": str(args.model), "layers": args.layers, "size": args.size,
              "machine": machine, "rows": rows, "verdicts": verdicts}  # fmt: skip
    lines = [
        f"# Build scoring scale-out — {args.layers} layers of {args.size}², `{args.model.name}`",
        "", f"Machine: {machine['cpu']}, {machine['cores']} cores, load {machine['loadavg']}.", "",
        "| runner | layers/s, whole run | vs 1 Dask worker | layers/s, mapping only | vs 1 Dask worker "
        "| serial end (s) | peak RSS main (MB) | peak RSS per worker (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for name, r in rows.items():
        workers = ", ".join(f"{m:.0f}" for m in r["worker_peak_mb"]) or "-"
        lines.append(f"| {name} | {r['layers_per_s']:.2f} | {r['layers_per_s'] / base:.2f}x | "
                     f"{r['mapped_layers_per_s']:.2f} | {r['mapped_layers_per_s'] / base_map:.2f}x | "
                     f"{r['finish_s']:.1f} | {r['peak_mb']:.0f} | {workers} |")  # fmt: skip
    v = verdicts
    lines += ["", f"Layer verdicts (flagged = a component of >= 20 px): {v['found']} of "
              f"{v['defective_layers']} layers with a true defect of >= 20 px flagged; "
              f"{v['clean_flagged']} of {v['clean_layers']} defect-free layers flagged.",
              f"3D defects: {v['matched']} of the generator's {v['volumes']} pore columns come "
              f"back as one joined defect ({v['predicted_3d_defects']} 3D defects in all)."]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "score.json").write_text(json.dumps(result, indent=2))
    (args.out / "score.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
