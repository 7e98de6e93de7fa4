"""The ``pbf`` command line: the core commands of :mod:`pbf_core.cli` plus the pipeline.

``pbf run`` runs :func:`flows.training.train_pipeline` in this process and prints the summary;
``pbf serve-flow`` serves it with a schedule (Prefect's ``flow.serve``). Prefect keeps its
database under the state directory unless ``PREFECT_HOME`` or ``PREFECT_API_URL`` say otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pbf_core.cli import app, friendly_errors, out_console

__all__ = ["app"]

DEFAULT_CRON = "0 2 * * *"


def _prefect_env() -> Path:
    """Point Prefect at the state directory and keep it offline, unless the user chose otherwise."""
    from pbf_core.config import Settings

    home = Settings().state_dir.resolve() / "prefect"
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    home = Path(os.environ["PREFECT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    return home


def _load(config: Path | None, raw: Path | None, device: str | None):
    from pbf_core.config import PipelineConfig, load_config

    cfg = load_config(config, PipelineConfig)
    if raw is None and device is None:
        return cfg
    data = cfg.model_dump(mode="json")
    if raw is not None:
        data["data"]["raw"] = str(raw)
    if device is not None:
        data["train"]["device"] = device
    return load_config(None, PipelineConfig, **data)


@app.command()
@friendly_errors
def run(
    config: Annotated[
        Path | None, typer.Option(help="YAML PipelineConfig preset, e.g. configs/default.yaml.")
    ] = None,
    raw: Annotated[
        Path | None, typer.Option(help="Raw data dir or .zip instead of the synthetic build.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Training device: auto, cpu, cuda, mps.")
    ] = None,
) -> None:
    """Run the whole pipeline: data, training, ONNX fp32/int8, benchmark, registry, promotion."""
    cfg = _load(config, raw, device)
    home = _prefect_env()
    from flows.training import train_pipeline
    from tasks.tracking import resolve_store, ui_command

    summary = train_pipeline(cfg)
    print_summary(summary, ui_command(resolve_store()), home)


def print_summary(summary: dict, mlflow_ui: str, prefect_home: Path) -> None:
    """The end of ``pbf run``: champion, scores against truth, int8 speed-up, what to run next."""
    d = summary["decision"]
    out_console.print(
        f"\n[bold]{summary['registry']}[/]: this run registered int8 v{summary['versions']['int8']}"
        f" and fp32 v{summary['versions']['fp32']} as [bold]{d['alias']}[/] — {d['reason']}",
        highlight=False,
    )
    out_console.print(
        f"champion: v{summary['champion_version']} (models:/{summary['registry']}@champion)"
        if summary["champion_version"]
        else "champion: none yet (no candidate has passed the gate)",
        highlight=False,
    )
    table = Table(title=f"candidate on {summary['eval_layers']} held-out layers")
    for col in ("against", "Dice", "recall", "precision", "instance recall", "FP / image"):
        table.add_column(col, justify="right")
    for labels, m in summary["scores"].items():
        table.add_row(
            "true masks" if labels == "truth" else "weak labels",
            *(f"{m[k]:.3f}" for k in ("dice", "recall", "precision", "instance_recall")),
            f"{m['false_positives_per_image']:.2f}",
        )
    out_console.print(table)
    speed = ", ".join(f"{side}²: {x:.2f}x" for side, x in summary["speedup"].items())
    parity = summary["parity"]
    out_console.print(
        f"int8 ONNX vs PyTorch fp32: {speed or 'n/a'}; parity "
        f"{'passed' if parity.get('passed') else 'FAILED: ' + parity.get('reason', '')} "
        f"(Dice {parity.get('dice', float('nan')):.4f} vs fp32)",
        highlight=False,
    )
    out_console.print(
        f"pipeline: {summary['seconds']:.0f} s; MLflow run: {summary['run_url']}", highlight=False
    )
    out_console.print("\nnext:", highlight=False)
    ui = f".venv/bin/{mlflow_ui}" if mlflow_ui else f"open {summary['run_url'].split('/#')[0]}"
    out_console.print(f"  MLflow UI:   {ui}", highlight=False, soft_wrap=True)
    api = os.environ.get("PREFECT_API_URL")
    prefect_ui = (
        f"open {api.removesuffix('/').removesuffix('/api')}"
        if api
        else f"PREFECT_HOME={prefect_home} .venv/bin/prefect server start  # then open http://127.0.0.1:4200"
    )
    out_console.print(f"  Prefect UI:  {prefect_ui}", highlight=False, soft_wrap=True)
    from pbf_core.config import Settings

    bento_home = os.environ.get("BENTOML_HOME") or Settings().state_dir.resolve() / "bentoml"
    out_console.print(
        f"  serve:       BENTOML_HOME={bento_home} .venv/bin/bentoml serve service:DefectService"
        f"  # or: make serve; model {summary.get('bento_model') or 'packaged by `pbf package`'}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("serve-flow")
@friendly_errors
def serve_flow(
    config: Annotated[Path | None, typer.Option(help="YAML PipelineConfig for every run.")] = None,
    cron: Annotated[str, typer.Option(help="Schedule (cron, UTC).")] = DEFAULT_CRON,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "nightly-serve",
) -> None:
    """Serve the pipeline from this process on a schedule (needs a Prefect server: PREFECT_API_URL)."""
    cfg = _load(config, None, None)
    _prefect_env()
    from flows.training import train_pipeline

    train_pipeline.serve(
        name=name,
        cron=cron,
        parameters={"config": cfg.model_dump(mode="json")},
        tags=["pbf", "retrain"],
        description="Retrain the PBF defect segmenter and gate it into the registry.",
    )


@app.command()
@friendly_errors
def package(
    alias: Annotated[str, typer.Option(help="Registry alias of the int8 variant.")] = "champion",
    int8: Annotated[
        Path | None, typer.Option(help="Package this int8 ONNX file instead of the registry's.")
    ] = None,
    fp32: Annotated[
        Path | None, typer.Option(help="Package this fp32 ONNX file instead of the registry's.")
    ] = None,
) -> None:
    """Write the champion (int8 + fp32 ONNX, with metadata) into the BentoML store for serving."""
    from tasks.packaging import package_champion, package_onnx, use_state_store

    home = use_state_store()
    local = {k: v for k, v in (("int8", int8), ("fp32", fp32)) if v is not None}
    tag = package_onnx(local) if local else package_champion(alias)
    out_console.print(f"packaged {tag} into {home}", highlight=False)
    out_console.print(
        f"serve: BENTOML_HOME={home} .venv/bin/bentoml serve service:DefectService",
        highlight=False,
        soft_wrap=True,
    )


if __name__ == "__main__":
    app()
