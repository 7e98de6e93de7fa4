"""``pbf synth`` and ``pbf prepare``: raw layers in, a prepared dataset out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import out_console, progress_bar, say


def synth(
    out: Annotated[Path, typer.Argument(help="Directory to write the build into.")],
    layers: Annotated[int, typer.Option(help="Number of usable layers.")] = 40,
    size: Annotated[int, typer.Option(help="Layer width and height in pixels.")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same build.")] = 0,
    parts: Annotated[int | None, typer.Option(help="Parts on the build plate.")] = None,
    defects_per_layer: Annotated[
        float | None, typer.Option(help="Mean true defects per layer.")
    ] = None,
    noise_frames: Annotated[
        float | None, typer.Option(help="Fraction of extra unusable frames (0 for none).")
    ] = None,
    style: Annotated[
        str | None,
        typer.Option(
            help="Look of the layers: classic (one fixed look), a family drawing each layer's "
            "look (lab, bright, dim, speckle, am04; foundry is held out of training) or mixed."
        ),
    ] = None,
    volume_defects: Annotated[
        float | None,
        typer.Option(help="3D defects (pore columns through 2-12 layers) per 100 layers."),
    ] = None,
) -> None:
    """Generate a synthetic PBF build: 16-bit a/b/c layer triplets, true masks, manifest."""
    from pbf_core.config import SynthConfig, load_config
    from pbf_core.steps import generate_build

    cfg = load_config(
        None,
        SynthConfig,
        layers=layers,
        size=size,
        seed=seed,
        parts=parts,
        defects_per_layer=defects_per_layer,
        noise_frames=noise_frames,
        style=style,
        volume_defects=volume_defects,
    )
    with progress_bar("synthesising layers") as progress:
        manifest = generate_build(out, cfg, progress=progress)
    kinds: dict[str, int] = {}
    for layer in manifest["layers"]:
        kinds[layer["kind"]] = kinds.get(layer["kind"], 0) + 1
    say(f"wrote {out}: {', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}")


def prepare(
    raw: Annotated[
        Path,
        typer.Argument(
            help="Raw data: Kaggle a/b/c dir or .zip, images+masks folder, am04 tree, synthetic build."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Directory for the prepared dataset.")],
    method: Annotated[
        str | None,
        typer.Option(help="Weak label method: background (default), adaptive or threshold."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML preset: a PrepareConfig or a whole pipeline's.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Filter raw layers, normalise them, synthesise weak labels, measure label quality."""
    from pbf_core.config import PrepareConfig, load_config
    from pbf_core.steps import prepare_dataset

    cfg = load_config(config, PrepareConfig)
    if method is not None:
        labels = {**cfg.labels.model_dump(), "method": method}
        cfg = load_config(None, PrepareConfig, **{**cfg.model_dump(), "labels": labels})
    with progress_bar("preparing layers") as progress:
        dataset = prepare_dataset(raw, out, cfg, progress=progress)
    if json_out:
        out_console.print_json(json.dumps(dict(dataset.report)))
    else:
        print_report(dataset.report)
    say(f"prepared dataset: {out} (report: {out / 'report.json'})")


def print_report(report: dict) -> None:
    """Print a prepare report as tables: counts, drop reasons, label quality per method."""
    counts = report["counts"]
    table = Table(title=f"{report['format']} data from {report['source']}")
    keys = ("found", "kept", "dropped", "unmatched_files", "with_truth")
    for key in keys:
        table.add_column(key.replace("_", " "), justify="right")
    table.add_row(*(str(counts[k]) for k in keys))
    out_console.print(table)
    if report["dropped_by_reason"]:
        reasons = Table(title="dropped frames")
        for col in ("reason", "frames", "example"):
            reasons.add_column(col, justify="right" if col == "frames" else "left")
        for code, n in report["dropped_by_reason"].items():
            example = next(d for d in report["dropped"] if d["code"] == code)
            reasons.add_row(code, str(n), f"{example['id']}: {example['reason']}")
        out_console.print(reasons)
    if report["label_quality"]:
        quality = Table(title="weak label quality against true masks (micro-averaged)")
        quality.add_column("method")
        cols = ("precision", "recall", "iou", "instance_recall", "false_positives_per_image")
        for col in cols:
            quality.add_column(col.replace("_", " "), justify="right")
        for m, q in report["label_quality"].items():
            name = f"{m} (used)" if m == report["label_method"] else m
            quality.add_row(name, *(f"{q[c]:.3f}" for c in cols))
        out_console.print(quality)
