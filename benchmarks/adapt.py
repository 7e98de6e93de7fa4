"""Adaptation to a printer the model has not seen: ``pbf adapt`` measured where it matters.

Two targets, each scored before and after adapting, on layers the adaptation never trained on:

- the held-out ``foundry`` family: the model is adapted on the unlabelled layers of one foundry
  build (seed ``--foundry-seed``; its true masks score only its held-back test part) and both
  models are then scored on the standard held-out layers (seed 1000, as ``pbf held-out``);
- real am04 images (prepared with ``pbf prepare``; a triplet model is folded to the single view):
  pseudo-labels on the split's train and validation images, scores on its test images.

    python benchmarks/adapt.py --model .pbf/runs/<run>/model/model.safetensors \\
        --am04 .pbf/am04 --config configs/default.yaml

Writes ``benchmarks/results/adapt.json`` and ``adapt.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("dice", "precision", "recall", "instance_recall", "false_positives_per_image")


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="source model.safetensors")
    ap.add_argument("--am04", type=Path, help="prepared am04 dataset (skipped when absent)")
    ap.add_argument("--config", type=Path, help="whole-pipeline preset (train + adapt sections)")
    ap.add_argument("--foundry-layers", type=int, default=24, help="layers of the user's build")
    ap.add_argument("--foundry-seed", type=int, default=3000)
    ap.add_argument("--work", type=Path, default=Path(".pbf/bench-adapt"), help="scratch dir")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args()


def _adapt(args, dataset, name: str) -> dict:
    """Adapt on ``dataset``; the step's before/after scores on its held-back layers."""
    from pbf_core.config import AdaptConfig, TrainConfig, load_config
    from pbf_core.steps import adapt_model, split_dataset

    train = load_config(args.config, TrainConfig, labels="weak")
    cfg = load_config(args.config, AdaptConfig)
    start = time.perf_counter()
    adapted = adapt_model(args.model, split_dataset(dataset, train), cfg, train, args.work / name)
    row = {
        "target": name, "accepted": adapted.accepted, "reason": adapted.reason,
        "seconds": round(time.perf_counter() - start, 1), "pseudo": adapted.pseudo,
        "held_back": {"layers": adapted.after.layers, "against": adapted.after.reference,
                      "before": adapted.before.primary.headline,
                      "after": adapted.after.primary.headline},
        "guard": {"before": adapted.guard_before, "after": adapted.guard_after},
        "checkpoint": str(adapted.checkpoint),
    }  # fmt: skip
    print(f"{name}: {'accepted' if adapted.accepted else 'rejected'}: {adapted.reason}")
    return row


def _foundry(args) -> dict:
    """Adapt on a fresh foundry build, then score both models on the standard held-out layers."""
    from pbf_core.config import HeldOutConfig, PrepareConfig, SynthConfig, load_config
    from pbf_core.steps import evaluate_held_out, generate_build, prepare_dataset

    raw = args.work / "foundry-raw"
    synth = SynthConfig(
        layers=args.foundry_layers, size=512, seed=args.foundry_seed, style="foundry",
        noise_frames=0,
    )  # fmt: skip
    generate_build(raw, synth)
    dataset = prepare_dataset(
        raw, args.work / "foundry-prepared", load_config(args.config, PrepareConfig)
    )
    row = _adapt(args, dataset, "foundry")
    held = HeldOutConfig()
    row["held_out"] = {
        "layers": held.layers, "seed": held.seed,
        "before": evaluate_held_out(args.model, held).scores,
        "after": evaluate_held_out(row["checkpoint"], held).scores,
    }  # fmt: skip
    return row


def _markdown(result: dict) -> str:
    lines = [
        f"# Adaptation (`pbf adapt`) — {result['created']}", "",
        f"Source model: `{result['model']}`; machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, load {result['machine']['loadavg']}.", "",
        "| target | scored on | model | Dice | precision | recall | instance recall | FP / layer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for row in result["rows"]:
        hb = row["held_back"]
        where = f"{hb['layers']} held-back layers vs {hb['against']}"
        for when in ("before", "after"):
            h = hb[when]
            lines.append(
                f"| {row['target']} | {where} | {when} | "
                + " | ".join(f"{h[k]:.3f}" for k in KEYS)
                + " |"
            )
        if "held_out" in row:
            ho = row["held_out"]
            for when in ("before", "after"):
                s = ho[when]
                vals = [
                    s["dice"],
                    s["precision"],
                    s["recall"],
                    s["instance_recall"],
                    s["false_components"],
                ]
                lines.append(
                    f"| {row['target']} | {ho['layers']} held-out layers (seed {ho['seed']}) | {when} | "
                    + " | ".join(f"{v:.3f}" for v in vals)
                    + " |"
                )
    lines += [""] + [
        f"- {r['target']}: {'accepted' if r['accepted'] else 'rejected'} — {r['reason']} ({r['seconds']} s)"
        for r in result["rows"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = _arguments()
    from pbf_core.bench.machine import machine_info
    from pbf_core.steps import open_dataset

    rows = [_foundry(args)]
    if args.am04 is not None:
        rows.append(_adapt(args, open_dataset(args.am04), "am04"))
    result = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "model": str(args.model),
        "machine": machine_info(), "threads": os.cpu_count(), "rows": rows,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adapt.json").write_text(json.dumps(result, indent=2))
    (args.out / "adapt.md").write_text(_markdown(result))
    print((args.out / "adapt.md").read_text())


if __name__ == "__main__":
    main()
