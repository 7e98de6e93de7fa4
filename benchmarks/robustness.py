"""Robustness benchmark: a model (fp32 and int8) and the weak-label methods where they have not been.

Held-out layers are rendered fresh (``--seed``, not the seed of any training build): the classic
look clean and under every corruption of ``pbf_core.evaluation.corruptions`` at severities 1-5,
plus whole style families (by default the held-out ``foundry`` and the training families). Each
condition is scored against the generator's true masks. Writes ``benchmarks/results/<name>.json``
and ``.md``::

    python benchmarks/robustness.py --model .pbf/runs/<run>/model/model.safetensors

The int8 file is taken from ``--int8`` or the run's ``onnx/model.int8.onnx`` beside the model;
the fp32 model runs as the ``model.fp32.onnx`` beside it when there is one (the same model as the
checkpoint, checked at export, and faster).

``--run RUN_ID`` scores that pipeline run's model (``$PBF_STATE_DIR/runs/<run>/model/``) and logs
the results to its MLflow run: ``robustness/<method>/<condition>/<score>`` for the clean layers
and every style, ``robustness/<method>/<corruption>/relative_dice_s1_3`` (and ``_s1_5``,
``worst_false_components_s1_3``) per corruption, plus both files as artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from pbf_core.evaluation.robustness import SCORES, score_cells

RESULTS = Path(__file__).resolve().parent / "results"


def methods(args: argparse.Namespace) -> dict:
    from pbf_core.deploy.inference import Segmenter
    from pbf_core.evaluation.robustness import model_masks, weak_label_masks

    out = {}
    if args.model is not None:
        # the fp32 ONNX file beside the int8 one runs the same model faster than PyTorch
        int8 = args.int8 or args.model.parent.parent / "onnx" / "model.int8.onnx"
        fp32 = int8.with_name("model.fp32.onnx")
        fp32_model = Segmenter.from_onnx(fp32) if fp32.is_file() else None
        out["model-fp32"] = model_masks(fp32_model or Segmenter.from_checkpoint(args.model))
        if int8.is_file():
            out["model-int8"] = model_masks(Segmenter.from_onnx(int8))
    for method in args.weak:
        out[f"weak-{method}"] = weak_label_masks(method)
    return out


def mlflow_metrics(result: dict) -> dict[str, float]:
    """The result as flat MLflow metrics (names: letters, digits, ``_-./`` only)."""
    out = {}
    for r in result["rows"]:
        if r["severity"] == 0:
            condition = r["condition"].replace(":", "/")
            for k in SCORES:
                out[f"robustness/{r['method']}/{condition}/{k}"] = r[k]
    for top in (3, 5):
        for method, per in result[f"relative_severity_1_{top}"].items():
            for corruption, v in per.items():
                key = f"robustness/{method}/{corruption}"
                out[f"{key}/relative_dice_s1_{top}"] = v["relative_dice"]
                out[f"{key}/worst_false_components_s1_{top}"] = v["worst_false_components"]
    return out


def log_to_run(run_id: str, result: dict, files: list[Path]) -> None:
    from tasks.tracking.runs import log_metrics
    from tasks.tracking.store import client

    log_metrics(run_id, mlflow_metrics(result))
    for f in files:
        client().log_artifact(run_id, str(f), "robustness")


def main() -> int:
    from pbf_core.evaluation.corruptions import CORRUPTIONS
    from pbf_core.evaluation.robustness import held_out_layers, relative_to_clean, robustness_scores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model.safetensors (omit: weak labels only)")
    ap.add_argument("--int8", type=Path, help="int8 ONNX file (default: the run's)")
    ap.add_argument("--weak", nargs="*", default=["background", "threshold"])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1000, help="held-out seed (not a training one)")
    ap.add_argument(
        "--styles", nargs="*", default=["foundry", "lab", "bright", "dim", "speckle", "am04"]
    )
    ap.add_argument("--corruptions", nargs="*", default=list(CORRUPTIONS))
    ap.add_argument("--name", default="robustness")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the two files")
    ap.add_argument("--run", help="pipeline run id: score its model, log the results to it")
    args = ap.parse_args()
    if args.run and args.model is None:
        from pbf_core.config import Settings

        args.model = Settings().state_dir / "runs" / args.run / "model" / "model.safetensors"

    started = time.perf_counter()
    clean = held_out_layers("classic", args.layers, args.size, args.seed)
    styles = {s: held_out_layers(s, args.layers, args.size, args.seed) for s in args.styles}
    rows = robustness_scores(
        methods(args), clean, args.corruptions, styles, progress=lambda t: print(t, flush=True)
    )
    result = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": str(args.model) if args.model else None,
        "held_out": {"layers": args.layers, "size": args.size, "seed": args.seed},
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_avg_end": os.getloadavg(),
        },
        "rows": [r.to_dict() for r in rows],
        "relative_severity_1_3": relative_to_clean(rows, 3),
        "relative_severity_1_5": relative_to_clean(rows, 5),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    if args.run:
        log_to_run(args.run, result, [args.out / f"{args.name}.{ext}" for ext in ("json", "md")])
        print(f"logged to MLflow run {args.run}")
    return 0


def markdown(result: dict) -> str:
    rows = result["rows"]
    names = list(dict.fromkeys(r["method"] for r in rows))
    held = result["held_out"]
    lines = [
        f"# Robustness on held-out layers ({held['layers']} per condition, {held['size']}², "
        f"seed {held['seed']})",
        "",
        f"Model: `{result['model']}`. {result['seconds']:.0f} s on {result['machine']['cpus']} "
        "CPUs. Scores against the generator's true masks; false components = predicted "
        "components touching no true defect, per layer.",
        "",
        "## Clean and other looks",
        "",
        "| method | condition | " + " | ".join(SCORES) + " |",
        "|---|---|" + "---:|" * len(SCORES),
    ]
    for r in rows:
        if r["severity"] == 0:
            cells = " | ".join(score_cells(r))
            lines.append(f"| {r['method']} | {r['condition']} | {cells} |")
    for sev, key in ((3, "relative_severity_1_3"), (5, "relative_severity_1_5")):
        rel = result[key]
        corruptions = list(dict.fromkeys(c for per in rel.values() for c in per))
        lines += ["", f"## Corruptions, severities 1-{sev}: mean Dice relative to clean / "
                  "worst false components per layer", "",
                  "| corruption | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]  # fmt: skip
        for c in corruptions:
            cells = [f"{rel[m][c]['relative_dice']:.2f} / {rel[m][c]['worst_false_components']:.1f}"
                     for m in names]  # fmt: skip
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
