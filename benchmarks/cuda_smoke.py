"""CUDA smoke test: the GPU path trains, checkpoints and predicts (< 2 minutes on one GPU).

Needs only the repository and its pip-installed dependencies (no network, no data): it
generates a tiny synthetic build, prepares it, trains a few epochs with ``device=cuda`` and
automatic mixed precision (bf16 where the GPU has it, else fp16 with a gradient scaler), also
runs a short fp16 fit, saves and reloads the checkpoint, segments a layer with the
:class:`~pbf_core.inference.Segmenter` on the GPU and compares it with the CPU float32 result,
and times training steps. Writes a JSON report and exits non-zero if any check fails.

    python benchmarks/cuda_smoke.py --out "${OUT:-/tmp}/cuda_smoke.json"
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("cuda_smoke.json"), help="JSON report")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    report: dict = {"checks": {}, "timings_s": {}, "ok": False}
    checks = report["checks"]
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(args.workdir or tmp), report)
    except Exception as exc:  # a smoke test reports every failure instead of dying silently
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
    report["ok"] = bool(checks) and all(checks.values()) and "error" not in report
    report["total_s"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "traceback"}, indent=2))
    if "traceback" in report:
        print(report["traceback"], file=sys.stderr)
    failed = [k for k, v in checks.items() if not v]
    verdict = "PASS" if report["ok"] else f"FAIL {failed or report.get('error')}"
    print(f"cuda smoke: {verdict} ({report['total_s']} s)")
    return 0 if report["ok"] else 1


def run(work: Path, report: dict) -> None:
    import numpy as np
    import torch

    from pbf_core.config import PrepareConfig, SynthConfig, TrainConfig
    from pbf_core.data.prepare import prepare_dataset
    from pbf_core.data.split import split_dataset
    from pbf_core.data.synthetic import generate_build
    from pbf_core.deploy.inference import Segmenter
    from pbf_core.model.checkpoints import load_checkpoint
    from pbf_core.model.devices import resolve_device
    from pbf_core.model.factory import create_model
    from pbf_core.model.loop import fit
    from pbf_core.model.losses import dice_bce_loss
    from pbf_core.model.training import setup_training, train_model

    checks, timings = report["checks"], report["timings_s"]
    checks["cuda_available"] = torch.cuda.is_available()
    report["torch"] = torch.__version__
    report["cuda"] = torch.version.cuda
    if not checks["cuda_available"]:
        raise RuntimeError("torch.cuda.is_available() is False")
    dev = resolve_device("cuda")
    report["gpu"] = torch.cuda.get_device_name(dev)
    report["bf16_supported"] = torch.cuda.is_bf16_supported()

    t = time.perf_counter()
    raw, data = work / "raw", work / "prepared"
    generate_build(raw, SynthConfig(layers=16, size=256, seed=0, noise_frames=0.0))
    prepared = prepare_dataset(raw, data, PrepareConfig())
    timings["synth_and_prepare"] = time.perf_counter() - t

    cfg = TrainConfig(
        device="cuda",
        precision="auto",
        labels="truth",
        epochs=4,
        steps_per_epoch=15,
        batch_size=16,
        patch_size=128,
        tile_size=256,
        tile_overlap=32,
        num_workers=2,
    )
    t = time.perf_counter()
    dataset = split_dataset(prepared, cfg)
    result = train_model(dataset, cfg, work / "run", progress=False)
    timings["train_4_epochs"] = time.perf_counter() - t
    h = result.history
    losses = [e["train_loss"] for e in h.epochs]
    report["train"] = {
        "device": h.device,
        "precision": h.precision,
        "epochs": len(h.epochs),
        "losses": losses,
        "val_dice": [e["val_dice"] for e in h.epochs],
        "test_truth_pixel": dict(result.evaluation.truth.pixel)
        if result.evaluation.truth
        else None,
        "threshold": result.spec.threshold,
    }
    checks["trained_on_cuda"] = h.device.startswith("cuda")
    checks["mixed_precision"] = h.precision in ("bfloat16", "float16")
    checks["losses_finite"] = all(np.isfinite(losses))
    checks["loss_decreased"] = losses[-1] < losses[0]

    # fp16 with the gradient scaler, the path of GPUs without bf16
    t = time.perf_counter()
    fp16 = cfg.model_copy(update={"precision": "fp16", "epochs": 1, "steps_per_epoch": 5})
    setup = setup_training(dataset, fp16)
    h16 = fit(setup.model, setup.train_loader, setup.val, fp16, progress=False)
    timings["fit_fp16_5_steps"] = time.perf_counter() - t
    checks["fp16_fit_finite"] = bool(np.isfinite(h16.epochs[0]["train_loss"]))

    t = time.perf_counter()
    model, _ = load_checkpoint(result.checkpoint, device="cuda")
    checks["checkpoint_reloads_on_cuda"] = next(model.parameters()).is_cuda
    timings["load_checkpoint"] = time.perf_counter() - t

    layer = dataset.samples([dataset.entries()[0].id])[0]
    gpu = Segmenter.from_checkpoint(result.checkpoint, device="cuda", precision="auto")
    cpu = Segmenter.from_checkpoint(result.checkpoint, device="cpu", precision="fp32")
    gpu.segment(layer.image)  # warm-up (cuDNN autotuning)
    torch.cuda.synchronize()
    t = time.perf_counter()
    out_gpu = gpu.segment(layer.image)
    torch.cuda.synchronize()
    timings["segment_256px_cuda"] = time.perf_counter() - t
    out_cpu = cpu.segment(layer.image)
    diff = np.abs(out_gpu.prob - out_cpu.prob)
    agree = float((out_gpu.mask == out_cpu.mask).mean())
    report["segment"] = {
        "shape": list(out_gpu.prob.shape),
        "components": len(out_gpu.components),
        "max_abs_prob_diff_vs_cpu_fp32": float(diff.max()),
        "mean_abs_prob_diff_vs_cpu_fp32": float(diff.mean()),
        "mask_agreement_vs_cpu_fp32": agree,
    }
    checks["segment_shape"] = out_gpu.prob.shape == layer.image.shape[1:]
    # bf16/fp16 on the GPU vs float32 on the CPU: pixels near the threshold may flip
    checks["segment_matches_cpu"] = agree >= 0.99 and float(diff.mean()) < 0.02

    # throughput of a training step at two sizes (bf16/fp16 autocast, channels-last)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    for batch, size in ((16, 128), (32, 256)):
        net = create_model(in_channels=3).to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        x = torch.rand(batch, 3, size, size, device=dev).contiguous(
            memory_format=torch.channels_last
        )
        y = (torch.rand(batch, 1, size, size, device=dev) > 0.99).float()
        for i in range(25):
            if i == 5:
                torch.cuda.synchronize()
                t = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype):
                loss = dice_bce_loss(net(x), y, 3.0)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        torch.cuda.synchronize()
        timings[f"train_step_b{batch}_{size}px"] = (time.perf_counter() - t) / 20
    report["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20


if __name__ == "__main__":
    raise SystemExit(main())
