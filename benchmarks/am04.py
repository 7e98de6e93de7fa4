"""Supervised training on real annotated layers (am04) against the weak-label baseline.

Trains on the hand-drawn masks (``labels=truth``), split by image, and reports pixel and
instance metrics per defect type on the held-out test images. The baseline is the classical
weak-label methods of :mod:`pbf_core.labels` applied to the same test images. The comparison
asked for is the model's instance recall *at no more false positives per image than the
baseline*; the operating threshold for that is chosen on the VALIDATION images (highest
instance recall whose false positives per image do not exceed the baseline's on those images)
and then applied to the test images, so the test numbers are not tuned on the test set.

    pbf prepare ../shared/data/real/am04 .pbf/am04      # once
    python benchmarks/am04.py --data .pbf/am04 --minutes 10

The training preset is ``configs/train/am04.yaml`` (stratified split, type-balanced patches).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
#: Thresholds scanned for the instance operating point.
PARTS = ("train", "val", "test")
SCAN = np.round(np.concatenate([np.linspace(0.05, 0.9, 18), [0.95, 0.98, 0.99]]), 3)


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="prepared am04 dataset")
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget")
    ap.add_argument(
        "--config",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "configs" / "train" / "am04.yaml",
        help="YAML TrainConfig preset (default: configs/train/am04.yaml)",
    )
    ap.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="budget clock: wall time, or CPU time of this process (on a shared machine)",
    )
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--seed", type=int, help="split and training seed (default: the preset's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default=None, help="result file stem")
    return ap.parse_args()


def _train(args: argparse.Namespace):
    """Split, train within the budget, calibrate: (cfg, dataset, setup, history, wall s, eval)."""
    from pbf_core.config import TrainConfig, load_config
    from pbf_core.data.dataset import open_dataset
    from pbf_core.data.split import split_dataset
    from pbf_core.model.devices import torch_threads
    from pbf_core.model.loop import fit
    from pbf_core.model.training import finish_training, setup_training

    cfg = load_config(
        args.config,
        TrainConfig,
        labels="truth",
        max_minutes=args.minutes,
        device=args.device,
        threads=args.threads,
        budget_clock=args.clock,
        seed=args.seed,
    )
    dataset = split_dataset(open_dataset(args.data), cfg)
    setup = setup_training(dataset, cfg)
    t0 = time.perf_counter()
    history = fit(setup.model, setup.train_loader, setup.val, cfg, progress=True)
    train_s = time.perf_counter() - t0
    with torch_threads(cfg.threads):
        spec, evaluation = finish_training(setup, history, cfg)
    return cfg, dataset, setup, history, train_s, spec, evaluation


def _baselines(val: list, test: list) -> dict:
    """Every weak-label method on the validation and test images."""
    from pbf_core.config import LabelConfig
    from pbf_core.data.labels import METHODS, synthesize_labels
    from pbf_core.evaluation.metrics import (
        instance_counts,
        instance_metrics,
        type_recall,
        type_recall_counts,
    )

    baselines = {}
    for method in METHODS:
        label_cfg = LabelConfig(method=method)
        per_split = {}
        for name, samples in (("val", val), ("test", test)):
            masks = [synthesize_labels(s.image, label_cfg, s.bed) for s in samples]
            q = instance_metrics(
                instance_counts(m, s.truth) for m, s in zip(masks, samples, strict=True)
            )
            q["per_type"] = type_recall(
                type_recall_counts(m, s.truth, s.types)
                for m, s in zip(masks, samples, strict=True)
                if s.types is not None
            )
            per_split[name] = q
        baselines[method] = per_split
    return baselines


def _comparisons(baselines: dict, val_curve: list, test_probs: list, test: list) -> dict:
    """The model on the test images at each baseline's false-positive rate (picked on val)."""
    from pbf_core.evaluation.scores import score_masks

    comparisons = {}
    for method, q in baselines.items():
        budget = q["val"]["false_positives_per_image"]
        ok = [r for r in val_curve if r["false_positives_per_image"] <= budget]
        if not ok:
            comparisons[method] = {"val_fp_budget": budget, "threshold": None}
            continue
        best = max(ok, key=lambda r: (r["instance_recall"], r["threshold"]))
        th = best["threshold"]
        scored = score_masks(test_probs, [s.truth for s in test], th, [s.types for s in test])
        comparisons[method] = {
            "val_fp_budget": budget,
            "threshold": th,
            "test_model": {
                "instance_recall": scored.instance["instance_recall"],
                "false_positives_per_image": scored.instance["false_positives_per_image"],
                "pixel": dict(scored.pixel),
                "per_type": scored.per_type,
            },
            "test_baseline": {
                "instance_recall": q["test"]["instance_recall"],
                "false_positives_per_image": q["test"]["false_positives_per_image"],
                "pixel": {k: q["test"][k] for k in ("dice", "iou", "precision", "recall")},
                "per_type": q["test"]["per_type"],
            },
        }
    return comparisons


def _bed_rule(seg, probs: list, samples: list, threshold: float) -> dict | None:
    """Test scores at the same threshold over the whole picture and kept to each powder bed."""
    from pbf_core.deploy.inference import Segmenter
    from pbf_core.evaluation.scores import predict_samples, score_masks

    if any(s.bed is None for s in samples):
        return None  # prepared before the manifest kept the bed
    if seg.spec.bed_only:  # what the model marks beyond the bed is 0 in probs: predict it again
        whole = Segmenter(seg.predict, seg.spec.model_copy(update={"bed_only": False}))
        probs = predict_samples(whole, samples)
    kept = [np.where(s.bed, p, 0) for p, s in zip(probs, samples, strict=True)]
    out = {}
    for name, scored_probs in (("whole_picture", probs), ("inside_bed", kept)):
        scored = score_masks(scored_probs, [s.truth for s in samples], threshold)
        out[name] = {"pixel": dict(scored.pixel), "instance": dict(scored.instance)}
    return {"threshold": threshold, "spec_bed_only": seg.spec.bed_only, **out}


def main() -> int:
    from pbf_core.deploy.inference import Segmenter
    from pbf_core.evaluation.metrics import instance_curve
    from pbf_core.evaluation.scores import predict_samples

    args = _arguments()
    cfg, dataset, setup, history, train_s, spec, evaluation = _train(args)
    seg = Segmenter.from_model(setup.model, spec, device=history.device, precision="fp32")
    val, test = setup.samples["val"], setup.samples["test"]
    val_probs, test_probs = predict_samples(seg, val), predict_samples(seg, test)
    baselines = _baselines(val, test)
    val_curve = instance_curve(val_probs, [s.truth for s in val], SCAN)
    test_curve = instance_curve(test_probs, [s.truth for s in test], SCAN)
    comparisons = _comparisons(baselines, val_curve, test_probs, test)
    result = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(args.data),
        "split": dataset.split.to_dict(),
        "train_s": round(history.seconds, 1),
        "budget_clock": cfg.budget_clock,
        "wall_s": round(train_s, 1),
        "stopped": history.stopped,
        "epochs": len(history.epochs),
        "best_epoch": history.best_epoch + 1,
        "device": history.device,
        "precision": history.precision,
        "load_avg_end": os.getloadavg(),
        "model_at_val_max_dice_threshold": evaluation.truth.to_dict(),
        "baselines": baselines,
        "at_baseline_false_positives": comparisons,
        "model_bed_rule": _bed_rule(seg, test_probs, test, evaluation.truth.threshold),
        "test_instance_curve": test_curve,
        "config": cfg.model_dump(mode="json"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"am04-{datetime.now(UTC):%Y%m%dT%H%M}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (RESULTS / f"{stem}.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


def _markdown(r: dict) -> str:
    lines = _summary_lines(r) + _type_lines(r) + _curve_lines(r)
    return "\n".join(lines) + "\n"


def _summary_lines(r: dict) -> list[str]:
    m, split = r["model_at_val_max_dice_threshold"], r["split"]
    lines = [
        "# am04: supervised U-Net vs weak-label baselines (held-out test images)",
        "",
        f"Split by image: {', '.join(f'{k} {len(split[k])}' for k in PARTS)}; trained "
        f"{r['train_s']} s on {r['device']} {r['precision']} ({r['epochs']} epochs, best "
        f"{r['best_epoch']}, {r['stopped']}).",
        "",
        f"Model at the validation max-Dice threshold {m['threshold']:.3f}: pixel Dice "
        f"{m['pixel']['dice']:.3f}, precision {m['pixel']['precision']:.3f}, recall "
        f"{m['pixel']['recall']:.3f}; instance recall {m['instance']['instance_recall']:.3f}, "
        f"false positives/image {m['instance']['false_positives_per_image']:.2f}; AP "
        f"{m['average_precision']:.3f}.",
        "",
        *_bed_lines(r.get("model_bed_rule")),
        "| operating point | threshold | instance recall | FP/image | pixel Dice | pixel recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, c in r["at_baseline_false_positives"].items():
        b = r["baselines"][method]["test"]
        lines.append(
            f"| baseline `{method}` | - | {b['instance_recall']:.3f} | "
            f"{b['false_positives_per_image']:.2f} | {b['dice']:.3f} | {b['recall']:.3f} |"
        )
        if c["threshold"] is None:
            lines.append(f"| model at <= `{method}` FP (val) | none reaches it | | | | |")
            continue
        t = c["test_model"]
        lines.append(
            f"| model at <= `{method}` FP (val) | {c['threshold']} | {t['instance_recall']:.3f} | "
            f"{t['false_positives_per_image']:.2f} | {t['pixel']['dice']:.3f} | "
            f"{t['pixel']['recall']:.3f} |"
        )
    return lines


def _bed_lines(b: dict | None) -> list[str]:
    if b is None:
        return []
    lines = [f"At the same threshold (the model's spec has bed_only={b['spec_bed_only']}):", ""]
    words = {
        "whole_picture": "over the whole picture",
        "inside_bed": "with what it marks outside the powder bed dropped",
    }
    for name, text in words.items():
        p, i = b[name]["pixel"], b[name]["instance"]
        lines.append(
            f"- {text}: pixel Dice {p['dice']:.3f}, precision {p['precision']:.3f}, recall "
            f"{p['recall']:.3f}; instance recall {i['instance_recall']:.3f}, false "
            f"positives/image {i['false_positives_per_image']:.2f}."
        )
    return [*lines, ""]


def _type_lines(r: dict) -> list[str]:
    m = r["model_at_val_max_dice_threshold"]
    lines = ["", "Per defect type, instance recall on the test images (detected / true):", ""]
    types = sorted(
        {t for c in r["at_baseline_false_positives"].values() if c.get("test_model")
         for t in (c["test_model"]["per_type"] or {})}
    )  # fmt: skip
    header = "| operating point | " + " | ".join(types) + " |"
    lines += [header, "|" + " --- |" * (len(types) + 1)]

    def cells(per_type: dict) -> str:
        return " | ".join(
            f"{per_type[t]['n_detected']}/{per_type[t]['n_true']}" if t in per_type else "-"
            for t in types
        )

    if m.get("per_type"):
        lines.append(f"| model (max-Dice threshold) | {cells(m['per_type'])} |")
    for method, c in r["at_baseline_false_positives"].items():
        lines.append(
            f"| baseline `{method}` | {cells(r['baselines'][method]['test']['per_type'])} |"
        )
        if c.get("test_model"):
            lines.append(
                f"| model at <= `{method}` FP | {cells(c['test_model']['per_type'] or {})} |"
            )
    return lines


def _curve_lines(r: dict) -> list[str]:
    lines = [
        "",
        "The model's whole test curve against each baseline's operating point (thresholds of the "
        "scan where the model has no more false positives per image than the baseline on the "
        "test images; a curve comparison, not a threshold choice):",
        "",
    ]
    for method in r["at_baseline_false_positives"]:
        b = r["baselines"][method]["test"]
        fp = b["false_positives_per_image"]
        ok = [p for p in r["test_instance_curve"] if p["false_positives_per_image"] <= fp]
        if not ok:
            lines.append(f"- `{method}` ({fp:.2f} FP/image): no threshold has as few")
            continue
        rec = [p["instance_recall"] for p in ok]
        lines.append(
            f"- `{method}` (instance recall {b['instance_recall']:.3f} at {fp:.2f} FP/image): "
            f"{len(ok)} thresholds from {min(p['threshold'] for p in ok)}, model instance recall "
            f"{min(rec):.3f}-{max(rec):.3f} at "
            f"{min(p['false_positives_per_image'] for p in ok):.2f}-"
            f"{max(p['false_positives_per_image'] for p in ok):.2f} FP/image"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
