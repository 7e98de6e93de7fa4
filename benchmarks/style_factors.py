"""Which parameters of a style family hurt a model: each one alone, and the family without it.

A model that fails on a held-out family (``foundry`` by default) fails because of some of the
family's parameters, not all of them. This renders the same held-out layers (``--seed``, the
defects and parts of the classic build) with

- ``classic``: the classic look, and ``family``: the whole family;
- ``+<param>``: only that parameter as the family draws it, the rest classic;
- ``-<param>``: the family with that parameter at its classic value, the rest as drawn,

and scores the model on each against the generator's true masks. Writes
``benchmarks/results/<name>.json`` and ``.md``::

    python benchmarks/style_factors.py --model .pbf/runs/<run>/onnx/model.fp32.onnx

The variants are rendered by passing their ranges to the generator in place of the family's
own (``held_out_layers(..., ranges)``); nothing global changes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from pbf_core.evaluation.robustness import SCORES, score_cells

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="model.safetensors or .onnx")
    ap.add_argument("--style", default="foundry", help="the family to take apart")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1000, help="held-out seed (not a training one)")
    ap.add_argument("--name", default="style_factors")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the two files")
    return ap.parse_args(argv)


def variants(family: dict) -> dict[str, dict]:
    """``family``, each parameter alone (``+p``) and the family without each one (``-p``).

    A parameter is switched off by pinning its range to the classic value rather than by
    dropping it, so every layer still draws it (the look's random stream stays in step) and the
    other parameters keep the values they have in the whole family: each variant differs from
    the family in that one parameter only.
    """
    from pbf_core.data.synthetic.styles import CLASSIC

    def pinned(name: str) -> tuple[float, float]:
        value = getattr(CLASSIC, name)
        return (value, value)

    out = {"family": dict(family)}
    out.update(
        {f"+{k}": {p: r if p == k else pinned(p) for p, r in family.items()} for k in family}
    )
    out.update(
        {f"-{k}": {p: pinned(p) if p == k else r for p, r in family.items()} for k in family}
    )
    return out


def score_variants(args: argparse.Namespace) -> list[dict]:
    from pbf_core.data.synthetic.styles import STYLES
    from pbf_core.deploy.inference import load_segmenter
    from pbf_core.evaluation.robustness import held_out_layers, model_masks, score_layers

    if args.style not in STYLES or args.style == "classic":
        raise SystemExit(f"--style must be a family with ranges: {', '.join(sorted(STYLES))}")
    masks = model_masks(load_segmenter(args.model))
    rows = []
    clean = held_out_layers("classic", args.layers, args.size, args.seed)
    rows.append({"variant": "classic", **score_layers(masks, clean)})
    for name, ranges in variants(STYLES[args.style]).items():
        layers = held_out_layers(args.style, args.layers, args.size, args.seed, ranges)
        rows.append({"variant": name, **score_layers(masks, layers)})
        print(f"{name:>20}  " + "  ".join(f"{k} {rows[-1][k]:.3f}" for k in SCORES), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [
        f"# What makes `{result['style']}` hard ({result['layers']} layers of "
        f"{result['size']}², seed {result['seed']})",
        "",
        f"Model: `{result['model']}`. {result['seconds']:.0f} s on {result['cpus']} CPUs. "
        "`+p`: only that parameter as the family draws it, the rest classic; `-p`: the family "
        "with that parameter at its classic value. False components per layer.",
        "",
        "| variant | " + " | ".join(SCORES) + " |",
        "|---|" + "---:|" * len(SCORES),
    ]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | " + " | ".join(score_cells(r)) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    rows = score_variants(args)
    result = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": str(args.model),
        "style": args.style,
        "layers": args.layers,
        "size": args.size,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - started, 1),
        "cpus": os.cpu_count(),
        "load_avg_end": os.getloadavg(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
