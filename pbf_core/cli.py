"""The ``pbf`` command line: thin wrappers over :mod:`pbf_core` functions.

Heavy modules are imported inside each command so ``pbf --help`` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pbf_core.errors import PbfError

app = typer.Typer(
    help="PBF defect segmentation: synthetic builds, data preparation, training, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out_console = Console()


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors (bad input, bad config) into one clear line and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PbfError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """Yield a ``progress(done, total)`` callback drawing a bar on stderr."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command()
@friendly_errors
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
) -> None:
    """Generate a synthetic PBF build: 16-bit a/b/c layer triplets, true masks, manifest."""
    from pbf_core.config import SynthConfig, load_config
    from pbf_core.data.synthetic import generate_build

    cfg = load_config(
        None,
        SynthConfig,
        layers=layers,
        size=size,
        seed=seed,
        parts=parts,
        defects_per_layer=defects_per_layer,
        noise_frames=noise_frames,
    )
    with progress_bar("synthesising layers") as progress:
        manifest = generate_build(out, cfg, progress=progress)
    kinds: dict[str, int] = {}
    for layer in manifest["layers"]:
        kinds[layer["kind"]] = kinds.get(layer["kind"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    out_console.print(f"wrote {out}: {summary}", highlight=False)


@app.command()
@friendly_errors
def prepare(
    raw: Annotated[
        Path,
        typer.Argument(
            help="Raw data: Kaggle a/b/c dir or .zip, images+masks folder, am04 tree, synthetic build."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Directory for the prepared dataset.")],
    method: Annotated[
        str | None, typer.Option(help="Weak label method: threshold (prototype) or background.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML PrepareConfig preset.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Filter raw layers, normalise them, synthesise weak labels, measure label quality."""
    from pbf_core.config import PrepareConfig, load_config
    from pbf_core.data.prepare import prepare_dataset

    cfg = load_config(config, PrepareConfig)
    if method is not None:
        cfg = load_config(
            None,
            PrepareConfig,
            **{**cfg.model_dump(), "labels": {**cfg.labels.model_dump(), "method": method}},
        )
    with progress_bar("preparing layers") as progress:
        report = prepare_dataset(raw, out, cfg, progress=progress)
    if json_out:
        out_console.print_json(json.dumps(report))
    else:
        print_report(report)
    out_console.print(f"prepared dataset: {out} (report: {out / 'report.json'})", highlight=False)


def print_report(report: dict) -> None:
    """Print a prepare report as tables: counts, drop reasons, label quality per method."""
    counts = report["counts"]
    table = Table(title=f"{report['format']} data from {report['source']}")
    for col in ("found", "kept", "dropped", "unmatched files", "with truth"):
        table.add_column(col, justify="right")
    table.add_row(
        *(str(counts[k]) for k in ("found", "kept", "dropped", "unmatched_files", "with_truth"))
    )
    out_console.print(table)
    if report["dropped_by_reason"]:
        reasons = Table(title="dropped frames")
        reasons.add_column("reason")
        reasons.add_column("frames", justify="right")
        reasons.add_column("example")
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


@app.command()
@friendly_errors
def train(
    data: Annotated[Path, typer.Argument(help="Prepared dataset (output of `pbf prepare`).")],
    out: Annotated[Path, typer.Option(help="Directory for the checkpoint and reports.")],
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    labels: Annotated[
        str | None, typer.Option(help="Train on weak labels (default) or truth masks.")
    ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Wall-clock training budget.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML TrainConfig preset.")] = None,
) -> None:
    """Train a U-Net on a prepared dataset; write model.safetensors and metrics.json."""
    from pbf_core.config import TrainConfig, load_config
    from pbf_core.model.training import train as train_model

    cfg = load_config(
        config, TrainConfig, device=device, epochs=epochs, labels=labels, max_minutes=max_minutes
    )
    result = train_model(data, out, cfg)
    scores = result.metrics["truth"] or result.metrics["weak"]
    against = "true masks" if result.metrics["truth"] else "weak labels"
    table = Table(title=f"{result.metrics['evaluated_on']} layers against {against}")
    for col in ("threshold", "dice", "precision", "recall", "instance recall", "FP / image"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{result.spec.threshold:.3f}",
        *(f"{scores['pixel'][k]:.3f}" for k in ("dice", "precision", "recall")),
        f"{scores['instance']['instance_recall']:.3f}",
        f"{scores['instance']['false_positives_per_image']:.2f}",
    )
    out_console.print(table)
    h = result.history
    out_console.print(
        f"model: {result.checkpoint} ({len(h.epochs)} epochs, best {h.best_epoch + 1}, "
        f"{h.stopped}, {h.seconds / 60:.1f} min on {h.device} {h.precision})",
        highlight=False,
    )


def _load_segmenter(model: Path, device: str):
    from pbf_core.deploy.inference import Segmenter

    if model.suffix == ".onnx":
        return Segmenter.from_onnx(model)
    return Segmenter.from_checkpoint(model, device=device)


@app.command()
@friendly_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="model.safetensors (or .onnx with pbf metadata).")],
    data: Annotated[Path, typer.Argument(help="Prepared dataset.")],
    split: Annotated[
        Path | None, typer.Option(help="split.json from training: score only its --part.")
    ] = None,
    part: Annotated[str, typer.Option(help="Which split part to score.")] = "test",
    threshold: Annotated[float | None, typer.Option(help="Override the model's threshold.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
) -> None:
    """Score a model on prepared layers against true masks and weak labels (JSON on stdout)."""
    from pbf_core.data.dataset import load_manifest, load_samples
    from pbf_core.errors import DatasetError
    from pbf_core.evaluation.scores import evaluate as evaluate_model

    manifest = load_manifest(data)
    entries = list(manifest.layers)
    if split is not None:
        try:
            wanted = set(json.loads(split.read_text())[part])
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(split, f"cannot read part {part!r} of the split ({exc})") from None
        entries = [e for e in entries if e.id in wanted]
    segmenter = _load_segmenter(model, device)
    if segmenter.spec.in_channels != manifest.channels:
        raise DatasetError(
            data,
            f"the model takes {segmenter.spec.in_channels} channel(s), "
            f"the dataset has {manifest.channels} ({', '.join(manifest.views)})",
        )
    with progress_bar("evaluating layers"):
        result = evaluate_model(segmenter, load_samples(data, entries), threshold)
    out_console.print_json(json.dumps(result))


@app.command()
@friendly_errors
def predict(
    model: Annotated[Path, typer.Argument(help="model.safetensors (or .onnx with pbf metadata).")],
    images: Annotated[
        list[Path],
        typer.Argument(help="Layer images; a/b/c files of one layer (B1a.png …) are grouped."),
    ],
    out: Annotated[Path, typer.Option(help="Directory for <layer>_mask.png and _overlay.png.")],
    threshold: Annotated[float | None, typer.Option(help="Override the model's threshold.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
) -> None:
    """Segment layer images: mask and overlay PNGs, defect components as JSON on stdout."""
    from pbf_core.data.imaging import read_image, write_mask
    from pbf_core.deploy.inputs import group_layer_files, prepare_input
    from pbf_core.deploy.overlays import render_overlay, write_overlay

    segmenter = _load_segmenter(model, device)
    try:
        layers = group_layer_files(images, segmenter.spec.views)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    report = {}
    for name, files in layers:
        raw = read_image(files[""]) if "" in files else {v: read_image(p) for v, p in files.items()}
        try:
            # normalised once: the model input doubles as the overlay's background
            x = prepare_input(raw, segmenter.spec)
        except ValueError as exc:
            console.print(f"[bold red]error:[/] {name}: {exc}", highlight=False)
            raise typer.Exit(2) from None
        result = segmenter.segment(x, threshold)
        write_mask(out / f"{name}_mask.png", result.mask)
        overlay = render_overlay(x, result.mask, result.components)
        write_overlay(out / f"{name}_overlay.png", overlay)
        report[name] = {
            "threshold": result.threshold,
            "defect_pixels": int(result.mask.sum()),
            "components": [c.to_dict() for c in result.components],
        }
    out_console.print_json(json.dumps(report))


@app.command()
@friendly_errors
def quantize(
    model: Annotated[Path, typer.Argument(help="model.safetensors from `pbf train`.")],
    calib: Annotated[
        Path, typer.Option(help="Prepared dataset the model was trained on (calibration, parity).")
    ],
    out: Annotated[Path, typer.Option(help="Directory for model.fp32.onnx, model.int8.onnx.")],
    method: Annotated[
        str | None, typer.Option(help="Calibration: minmax, entropy or percentile.")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Calibration tiles.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML QuantizeConfig preset.")] = None,
) -> None:
    """Export to ONNX and quantize to static int8; gate both on parity with the fp32 model."""
    from pbf_core.config import QuantizeConfig, load_config
    from pbf_core.deploy.quantization import quantize_model

    cfg = load_config(
        config, QuantizeConfig, calibration_method=method, calibration_samples=samples
    )
    result = quantize_model(model, calib, out, cfg)
    first = next(iter(result.parity.values()))
    table = Table(
        title=f"parity on {first.images} held-out layers against {first.labels} masks "
        f"(fp32 Dice {first.reference_dice:.4f}, recall {first.reference_recall:.4f})"
    )
    for col in ("variant", "file MB", "Dice", "recall", "agreement with fp32", "gate"):
        table.add_column(col, justify="right")
    for name, parity in result.parity.items():
        path = result.fp32 if name == "onnx-fp32" else result.int8
        table.add_row(
            name,
            f"{path.stat().st_size / 1e6:.2f}",
            f"{parity.dice:.4f}",
            f"{parity.recall:.4f}",
            f"{parity.agreement_dice:.4f}",
            "pass" if parity.passed else f"FAIL: {parity.reason}",
        )
    out_console.print(table)
    out_console.print(f"wrote {out} (report: {result.report})", highlight=False)
    if not result.passed:
        raise typer.Exit(1)


@app.command()
@friendly_errors
def benchmark(
    model: Annotated[Path, typer.Argument(help="model.safetensors from `pbf train`.")],
    data: Annotated[
        Path | None,
        typer.Option(help="Prepared training data: quantize if needed, parity on its test split."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for inference.json and .md.")] = Path(
        "benchmarks/results"
    ),
    onnx_dir: Annotated[
        Path | None, typer.Option(help="`pbf quantize` output (default: OUT/onnx).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Intra-op threads (default: all cores).")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds over all variants; best kept.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Timed batch-1 runs per size.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML BenchmarkConfig preset.")] = None,
) -> None:
    """Latency, throughput, size, memory and parity of every variant, in one run."""
    from pbf_core.bench.report import format_markdown
    from pbf_core.bench.runner import benchmark_model
    from pbf_core.config import BenchmarkConfig, load_config

    cfg = load_config(
        config, BenchmarkConfig, threads=threads, rounds=rounds, iterations=iterations
    )
    with progress_bar("benchmarking variants") as progress:
        report = benchmark_model(model, out, data, onnx_dir, cfg, progress=progress)
    out_console.print(format_markdown(report), highlight=False, markup=False)
    out_console.print(f"wrote {out / 'inference.json'} and {out / 'inference.md'}", highlight=False)


if __name__ == "__main__":
    app()
