"""``pbf train``, ``evaluate``, ``predict``, ``quantize``, ``benchmark``: one model, step by step."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.cli.common import console, out_console, progress_bar, say

if TYPE_CHECKING:
    from pbf_core.deploy.quantization import QuantizedModel

ConfigOption = Annotated[
    Path | None, typer.Option(help="YAML preset: the step's config or a whole pipeline's.")
]


def train(
    data: Annotated[Path, typer.Argument(help="Prepared dataset (output of `pbf prepare`).")],
    out: Annotated[Path, typer.Option(help="Directory for the checkpoint and reports.")],
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    labels: Annotated[
        str | None, typer.Option(help="Train on weak labels (default) or truth masks.")
    ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Wall-clock training budget.")] = None,
    config: ConfigOption = None,
) -> None:
    """Split a prepared dataset and train a U-Net on it; write model.safetensors and reports."""
    from pbf_core.config import TrainConfig, load_config
    from pbf_core.steps import open_dataset, split_dataset, train_model

    cfg = load_config(
        config, TrainConfig, device=device, epochs=epochs, labels=labels, max_minutes=max_minutes
    )
    dataset = split_dataset(open_dataset(data), cfg)
    trained = train_model(dataset, cfg, out)
    scores = trained.evaluation.primary
    against = "true masks" if trained.evaluation.truth else "weak labels"
    table = Table(title=f"{trained.split.evaluated_on} layers against {against}")
    for col in ("threshold", "dice", "precision", "recall", "instance recall", "FP / layer"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{trained.spec.threshold:.3f}",
        *(f"{scores.pixel[k]:.3f}" for k in ("dice", "precision", "recall")),
        f"{scores.instance['instance_recall']:.3f}",
        f"{scores.instance['false_positives_per_image']:.2f}",
    )
    out_console.print(table)
    h = trained.history
    say(
        f"model: {trained.checkpoint} ({len(h.epochs)} epochs, best {h.best_epoch + 1}, "
        f"{h.stopped}, {h.seconds / 60:.1f} min on {h.device} {h.precision})"
    )


def evaluate(
    model: Annotated[Path, typer.Argument(help="model.safetensors (or .onnx with pbf metadata).")],
    data: Annotated[Path, typer.Argument(help="Prepared dataset.")],
    split: Annotated[
        Path | None, typer.Option(help="split.json from training: score only its --part.")
    ] = None,
    part: Annotated[str, typer.Option(help="Which split part to score: train, val or test.")] = (
        "test"
    ),
    threshold: Annotated[float | None, typer.Option(help="Override the model's threshold.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
    report: Annotated[
        Path | None, typer.Option(help="Also write the PR curve, threshold table and overlays.")
    ] = None,
) -> None:
    """Score a model on prepared layers against true masks and weak labels (JSON on stdout)."""
    from pbf_core.errors import DatasetError
    from pbf_core.steps import Split, evaluate_model, open_dataset

    dataset = open_dataset(data)
    ids = [e.id for e in dataset.entries()]
    if split is not None:
        parts = Split.load(split)
        try:
            ids = parts.part(part)
        except ValueError as exc:
            raise DatasetError(split, str(exc)) from None
        if not ids:
            raise DatasetError(split, f"the {part!r} part of the split is empty")
    with progress_bar("evaluating layers"):
        result = evaluate_model(model, dataset, ids, out=report, threshold=threshold, device=device)
    out_console.print_json(json.dumps(result.to_dict()))


def held_out(
    model: Annotated[Path, typer.Argument(help="model.safetensors (or .onnx with pbf metadata).")],
    style: Annotated[
        str | None, typer.Option(help="Style family to render (default foundry: held out).")
    ] = None,
    layers: Annotated[int | None, typer.Option(min=1, help="Layers to render.")] = None,
    size: Annotated[int | None, typer.Option(help="Layer side (px).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (not a training build's).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or mps.")] = "cpu",
    config: ConfigOption = None,
) -> None:
    """Score a model on fresh layers of a style family it never saw (JSON on stdout)."""
    from pbf_core.config import HeldOutConfig, load_config
    from pbf_core.steps import evaluate_held_out

    cfg = load_config(config, HeldOutConfig, style=style, layers=layers, size=size, seed=seed)
    if cfg.layers < 1:
        raise typer.BadParameter("held_out.layers is 0: nothing to score", param_hint="--layers")
    console.print(f"rendering {cfg.layers} {cfg.style} layers of {cfg.size}² (seed {cfg.seed}) ...")
    result = evaluate_held_out(model, cfg, device=device)
    out_console.print_json(json.dumps(asdict(result)))


def _user_layers(raw: Path, out: Path, cfg):
    """A prepared dataset as it is, or raw layers prepared into ``out/data``."""
    from pbf_core.data.dataset import load_manifest
    from pbf_core.errors import DatasetError
    from pbf_core.steps import open_dataset, prepare_dataset

    if (raw / "manifest.json").is_file():
        try:
            load_manifest(raw)
            return open_dataset(raw)
        except DatasetError:
            pass  # a raw build's manifest (synthetic), not a prepared one
    with progress_bar("preparing your layers") as progress:
        return prepare_dataset(raw, out / "data", cfg, progress=progress)


def _adapt_table(adapted) -> Table:
    """Source and adapted model side by side on the held-back layers and the guard layers."""
    table = Table(
        title=f"{adapted.after.layers} held-back layers against {adapted.after.reference}"
    )
    for col in ("model", "dice", "precision", "recall", "instance recall", "FP / layer", "guard"):
        table.add_column(col, justify="right")
    for name, ev, guard in (
        ("source", adapted.before, adapted.guard_before),
        ("adapted", adapted.after, adapted.guard_after),
    ):
        h = ev.primary.headline
        table.add_row(
            name,
            *(f"{h[k]:.3f}" for k in ("dice", "precision", "recall", "instance_recall")),
            f"{h['false_positives_per_image']:.2f}",
            f"{guard['dice']:.3f}" if guard else "-",
        )
    return table


def adapt(
    raw: Annotated[
        Path,
        typer.Argument(
            help="Your printer's layers: raw (any layout `pbf prepare` reads) or prepared."
        ),
    ],
    model: Annotated[Path, typer.Option(help="The model to adapt (model.safetensors).")],
    out: Annotated[Path, typer.Option(help="Directory for the adapted model and its report.")],
    epochs: Annotated[int | None, typer.Option(min=1, help="Fine-tuning epochs.")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Fine-tuning time cap.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Whole-pipeline preset: its prepare, train and adapt sections."),
    ] = None,
) -> None:
    """Fine-tune a model on your unlabelled layers with pseudo-labels; gate the result.

    True masks, where your layers have them, only score the held-back layers: they are never
    trained on. Writes OUT/model.safetensors and OUT/adaptation.json (verdict and scores).
    """
    from pbf_core.config import PipelineConfig, load_config
    from pbf_core.model.checkpoints import read_spec
    from pbf_core.steps import adapt_model, split_dataset

    read_spec(model)  # a bad model file fails before any layer is prepared
    preset = load_config(config, PipelineConfig)
    overrides = {"epochs": epochs, "max_minutes": max_minutes}
    train = type(preset.train).model_validate(
        {**preset.train.model_dump(), "labels": "weak", **({"device": device} if device else {})}
    )
    cfg = type(preset.adapt).model_validate(
        {**preset.adapt.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    )
    dataset = split_dataset(_user_layers(raw, out, preset.prepare), train)
    split = dataset.require_split()
    say(
        f"adapting {model} to {dataset.layers} layers of {dataset.path}: pseudo-labels on "
        f"{len(split.train)} train + {len(split.val)} val, scored on {len(split.eval_ids)}"
    )
    adapted = adapt_model(model, dataset, cfg, train, out)
    out_console.print(_adapt_table(adapted))
    verdict = "accepted" if adapted.accepted else "rejected: keep using the source model"
    say(f"{verdict}: {adapted.reason}")
    say(f"model: {adapted.checkpoint}; report: {out / 'adaptation.json'}")


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
    from pbf_core.deploy.inference import load_segmenter
    from pbf_core.deploy.inputs import group_layer_files, model_input, stored_views
    from pbf_core.deploy.overlays import render_overlay, write_overlay

    segmenter = load_segmenter(model, device)
    try:
        layers = group_layer_files(images, segmenter.spec.views)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    report = {}
    for name, files in layers:
        raw = read_image(files[""]) if "" in files else {v: read_image(p) for v, p in files.items()}
        try:
            # normalised once: the model input doubles as the overlay's background; the bed
            # is found on the views as stored (a bed_only model marks nothing on the frame)
            x, bed = model_input(stored_views(raw, segmenter.spec), segmenter.spec)
        except ValueError as exc:
            console.print(f"[bold red]error:[/] {name}: {exc}", highlight=False)
            raise typer.Exit(2) from None
        result = segmenter.segment(x, threshold, bed=bed)
        write_mask(out / f"{name}_mask.png", result.mask)
        write_overlay(
            out / f"{name}_overlay.png", render_overlay(x, result.mask, result.components)
        )
        report[name] = {
            "threshold": result.threshold,
            "defect_pixels": int(result.mask.sum()),
            "components": [c.to_dict() for c in result.components],
        }
    out_console.print_json(json.dumps(report))


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
    config: ConfigOption = None,
) -> None:
    """Export to ONNX and quantize to static int8; gate both on parity with the fp32 model.

    Uses the split the model was trained with (split.json beside it).
    """
    from pbf_core.config import QuantizeConfig, load_config
    from pbf_core.steps import Split, export_model, open_dataset, quantize_model

    cfg = load_config(
        config, QuantizeConfig, calibration_method=method, calibration_samples=samples
    )
    dataset = open_dataset(calib).with_split(Split.load(model.parent / "split.json"))
    exported = export_model(model, out / "model.fp32.onnx")
    result = quantize_model(exported, dataset, cfg, out)
    _print_parity(result)
    say(f"wrote {out} (report: {result.report})")
    if not result.passed:
        raise typer.Exit(1)


def _print_parity(result: QuantizedModel) -> None:
    first = next(iter(result.parity.values()))
    table = Table(
        title=f"parity on {first.images} held-out layers against {first.labels} masks "
        f"(fp32 Dice {first.reference_dice:.4f}, recall {first.reference_recall:.4f})"
    )
    for col in ("variant", "file MB", "threshold", "Dice", "recall", "agreement", "gate"):
        table.add_column(col, justify="right")
    for name, parity in result.parity.items():
        path = result.fp32 if name == "onnx-fp32" else result.int8
        table.add_row(
            name,
            f"{path.stat().st_size / 1e6:.2f}",
            f"{result.thresholds[name]:.3f}",
            f"{parity.dice:.4f}",
            f"{parity.recall:.4f}",
            f"{parity.agreement_dice:.4f}",
            "pass" if parity.passed else f"FAIL: {parity.reason}",
        )
    out_console.print(table)


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
    config: ConfigOption = None,
) -> None:
    """Latency, throughput, size, memory and parity of every variant, side by side in one run."""
    from pbf_core.bench.report import format_markdown
    from pbf_core.bench.runner import onnx_files
    from pbf_core.config import BenchmarkConfig, QuantizeConfig, load_config
    from pbf_core.steps import Split, benchmark_model, open_dataset

    cfg = load_config(
        config, BenchmarkConfig, threads=threads, rounds=rounds, iterations=iterations
    )
    qcfg = load_config(config, QuantizeConfig)
    dataset = None
    if data is not None:
        dataset = open_dataset(data).with_split(Split.load(model.parent / "split.json"))
    fp32, int8 = onnx_files(model, onnx_dir or out / "onnx", dataset, qcfg)
    with progress_bar("benchmarking variants") as progress:
        report = benchmark_model(
            model, fp32, int8, out, cfg, dataset=dataset, quantize_cfg=qcfg, progress=progress
        )
    out_console.print(format_markdown(report), highlight=False, markup=False)
    say(f"wrote {out / 'inference.json'} and {out / 'inference.md'}")
