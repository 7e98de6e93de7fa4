"""Time-to-quality of U-Net training on this machine's CPU.

Generates (or reuses) a synthetic build, prepares it, trains with a wall-clock budget and,
after every epoch, scores the held-out TEST layers against their TRUE masks at the threshold
picked on the validation layers. Reports the training time (s) until the targets are first met
(pixel recall and pixel Dice; instance recall is reported beside them) and the final model's
scores, as JSON and a markdown table under ``benchmarks/results/``.

The per-epoch test scoring is not counted in the training time (``fit`` excludes the time
spent in its callback); the validation pass that picks the threshold is.

    python benchmarks/train.py --labels weak --minutes 10
    python benchmarks/train.py --labels truth --minutes 10 --config configs/train/cpu-10min.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def prepared_build(layers: int, size: int, seed: int, workdir: Path) -> Path:
    """Synthetic build prepared with the default config, cached under ``workdir``."""
    from pbf_core.config import PrepareConfig, SynthConfig
    from pbf_core.data.prepare import prepare_dataset
    from pbf_core.data.synthetic import generate_build

    base = workdir / f"synth-L{layers}-S{size}-seed{seed}"
    prepared = base / "prepared"
    if not (prepared / "manifest.json").is_file():
        generate_build(base / "raw", SynthConfig(layers=layers, size=size, seed=seed))
        prepare_dataset(base / "raw", prepared, PrepareConfig())
    return prepared


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="prepared dataset (default: a synthetic build)")
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0, help="synthetic build seed")
    ap.add_argument("--labels", choices=["weak", "truth"], default="weak")
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget")
    ap.add_argument("--config", type=Path, help="YAML TrainConfig preset")
    ap.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="budget clock: wall time, or CPU time of this process (on a shared machine)",
    )
    ap.add_argument(
        "--threads", type=int, help="torch CPU threads (1 is fastest when other jobs share cores)"
    )
    ap.add_argument("--recall", type=float, default=0.95, help="target pixel recall")
    ap.add_argument("--dice", type=float, default=0.85, help="target pixel Dice")
    ap.add_argument("--workdir", type=Path, default=Path(".pbf/bench"))
    ap.add_argument("--name", help="result file stem (default: train-<labels>-<time>)")
    args = ap.parse_args()

    import torch

    from pbf_core.config import TrainConfig, load_config
    from pbf_core.data.dataset import open_dataset
    from pbf_core.data.split import split_dataset
    from pbf_core.deploy.inference import Segmenter
    from pbf_core.evaluation.scores import evaluate
    from pbf_core.model.checkpoints import save_checkpoint
    from pbf_core.model.devices import torch_threads
    from pbf_core.model.loop import fit
    from pbf_core.model.training import finish_training, setup_training

    data = args.data or prepared_build(args.layers, args.size, args.seed, args.workdir)
    cfg = load_config(
        args.config,
        TrainConfig,
        labels=args.labels,
        max_minutes=args.minutes,
        device="cpu",
        threads=args.threads,
        budget_clock=args.clock,
    )
    dataset = split_dataset(open_dataset(data), cfg)
    setup = setup_training(dataset, cfg)
    test = setup.samples["test"]
    if not test or any(s.truth is None for s in test):
        raise SystemExit("the benchmark needs test layers with true masks")
    rows: list[dict] = []
    reached: dict | None = None
    load_start = os.getloadavg()

    def score_epoch(metrics: dict) -> None:
        nonlocal reached
        spec = _spec_for(setup, cfg, metrics["val_threshold"])
        seg = Segmenter.from_model(setup.model, spec, device="cpu", precision="fp32")
        truth = evaluate(seg, test).truth
        row = {
            "epoch": int(metrics["epoch"]) + 1,
            "train_s": round(metrics["elapsed_s"], 1),
            "wall_s": round(metrics["wall_s"], 1),
            "val_dice": round(metrics["val_dice"], 4),
            "threshold": metrics["val_threshold"],
            "test_dice": round(truth.pixel["dice"], 4),
            "test_recall": round(truth.pixel["recall"], 4),
            "test_precision": round(truth.pixel["precision"], 4),
            "test_instance_recall": round(truth.instance["instance_recall"], 4),
            "test_fp_per_image": round(truth.instance["false_positives_per_image"], 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if reached is None and row["test_recall"] >= args.recall and row["test_dice"] >= args.dice:
            reached = row
        setup.model.train()

    t0 = time.perf_counter()
    history = fit(setup.model, setup.train_loader, setup.val, cfg, score_epoch, progress=False)
    wall = time.perf_counter() - t0
    with torch_threads(cfg.threads):
        spec, evaluation = finish_training(setup, history, cfg)
    truth = evaluation.truth
    result = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(data),
        "labels": cfg.labels,
        "targets": {"pixel_recall": args.recall, "pixel_dice": args.dice},
        "reached": reached,
        "time_to_target_s": reached["train_s"] if reached else None,
        "train_s": round(history.seconds, 1),
        "budget_clock": cfg.budget_clock,
        "wall_s_with_scoring": round(wall, 1),
        "stopped": history.stopped,
        "best_epoch": history.best_epoch + 1,
        "final": {
            "threshold": spec.threshold,
            "threshold_policy": cfg.threshold_policy,
            "pixel": dict(truth.pixel),
            "instance_recall": truth.instance["instance_recall"],
            "false_positives_per_image": truth.instance["false_positives_per_image"],
            "best_dice_any_threshold": truth.best_dice,
            "per_type": truth.per_type,
            "weak_label_scores": dict(evaluation.weak.pixel),
        },
        "split": {k: len(dataset.split.part(k)) for k in ("train", "val", "test")},
        "epochs": rows,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": cfg.threads or torch.get_num_threads(),
            "load_avg_start": load_start,
            "load_avg_end": os.getloadavg(),
            "processor": platform.processor() or platform.machine(),
            "device": history.device,
            "precision": history.precision,
        },
        "config": cfg.model_dump(mode="json"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"train-{cfg.labels}-{datetime.now(UTC):%Y%m%dT%H%M}"
    result["checkpoint"] = str(
        save_checkpoint(args.workdir / f"{stem}.safetensors", setup.model.cpu(), spec)
    )
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


def _spec_for(setup, cfg, threshold: float):
    from pbf_core.model.training import model_spec

    return model_spec(setup.dataset, cfg).model_copy(update={"threshold": threshold})


def _markdown(r: dict) -> str:
    f = r["final"]
    target = r["targets"]
    lines = [
        f"# Training time-to-quality ({r['labels']} labels, {r['machine']['device']} "
        f"{r['machine']['precision']}, {r['machine']['cpus']} CPUs)",
        "",
        f"Data: `{r['data']}` (split {r['split']}); targets on TEST layers vs TRUE masks: pixel "
        f"recall >= {target['pixel_recall']}, pixel Dice >= {target['pixel_dice']}.",
        f"Training time is measured on the `{r['budget_clock']}` clock "
        "(`process` = CPU seconds of the training process, i.e. the wall time of an idle core).",
        "Load average (1, 5, 15 min) at start / end: "
        + " / ".join(
            ", ".join(f"{v:.2f}" for v in r["machine"][k])
            for k in ("load_avg_start", "load_avg_end")
        )
        + f" on {r['machine']['cpus']} cores (above the core count: other jobs shared them).",
        "",
        f"- time to target: **{r['time_to_target_s']} s** of training"
        if r["reached"]
        else "- target **not reached** within the budget",
        f"- trained {r['train_s']} s, stopped: {r['stopped']}, best epoch {r['best_epoch']}",
        f"- final (threshold {f['threshold']:.3f}, {f['threshold_policy']}): Dice "
        f"{f['pixel']['dice']:.4f}, recall {f['pixel']['recall']:.4f}, precision "
        f"{f['pixel']['precision']:.4f}, instance recall {f['instance_recall']:.4f}, "
        f"false positives/image {f['false_positives_per_image']:.2f}",
        "",
        "| epoch | train s | wall s | val Dice | threshold | test Dice | test recall | test precision "
        "| instance recall | FP/image |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["epochs"]:
        lines.append(
            f"| {row['epoch']} | {row['train_s']} | {row['wall_s']} | {row['val_dice']} | {row['threshold']} | "
            f"{row['test_dice']} | {row['test_recall']} | {row['test_precision']} | "
            f"{row['test_instance_recall']} | {row['test_fp_per_image']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
