"""``pbf run``, ``pbf serve-flow`` and ``pbf package``: the whole pipeline and its champion.

``pbf run`` runs :func:`flows.training.train_pipeline` in this process and prints its summary;
``pbf serve-flow`` serves it on a schedule (Prefect's ``flow.serve``). Prefect keeps its database
under the state directory unless ``PREFECT_HOME`` or ``PREFECT_API_URL`` say otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markdown import Markdown

from flows.cli.common import out_console, say
from pbf_core.errors import PbfError

if TYPE_CHECKING:
    from pbf_core.config import PipelineConfig
    from pbf_core.summary import RunSummary

DEFAULT_CRON = "0 2 * * *"


class PrefectSetupError(PbfError):
    """Prefect is not set up for what was asked (e.g. serving without a server)."""


def prefect_env() -> Path:
    """Point Prefect at the state directory and keep it offline, unless the user chose otherwise."""
    from pbf_core.config import Settings

    home = Settings().state_dir.resolve() / "prefect"
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The first start of a fresh local server migrates its database: slower than Prefect's 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    home = Path(os.environ["PREFECT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    return home


def load_pipeline_config(
    config: Path | None, raw: Path | None = None, device: str | None = None
) -> PipelineConfig:
    """The preset with the command line's overrides, validated."""
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
    cfg = load_pipeline_config(config, raw, device)
    home = prefect_env()
    from flows.training import train_pipeline
    from tasks.tracking.store import resolve_store, ui_command

    summary = train_pipeline(cfg)
    print_summary(summary, ui_command(resolve_store()), home)


def print_summary(summary: RunSummary, mlflow_ui: str, prefect_home: Path) -> None:
    """The end of ``pbf run``: the run's summary, then the commands that open what it made."""
    from pbf_core.config import Settings
    from pbf_core.summary import summary_markdown

    out_console.print(Markdown(summary_markdown(summary)))
    say("\nnext:")
    ui = f".venv/bin/{mlflow_ui}" if mlflow_ui else f"open {summary.run.url.split('/#')[0]}"
    say(f"  MLflow UI:   {ui}")
    api = os.environ.get("PREFECT_API_URL")
    prefect_ui = (
        f"open {api.removesuffix('/').removesuffix('/api')}"
        if api
        else f"PREFECT_HOME={prefect_home} .venv/bin/prefect server start  # then open http://127.0.0.1:4200"
    )
    say(f"  Prefect UI:  {prefect_ui}")
    bento_home = os.environ.get("BENTOML_HOME") or Settings().state_dir.resolve() / "bentoml"
    model = summary.bento_model or "packaged by `pbf package`"
    say(
        f"  serve:       BENTOML_HOME={bento_home} .venv/bin/bentoml serve service:DefectService"
        f"  # or: make serve; model {model}"
    )


def serve_flow(
    config: Annotated[Path | None, typer.Option(help="YAML PipelineConfig for every run.")] = None,
    cron: Annotated[str, typer.Option(help="Schedule (cron, UTC).")] = DEFAULT_CRON,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "nightly-serve",
) -> None:
    """Serve the pipeline from this process on a schedule (needs a Prefect server: PREFECT_API_URL)."""
    cfg = load_pipeline_config(config)
    if not os.environ.get("PREFECT_API_URL"):
        raise PrefectSetupError(
            "PREFECT_API_URL is not set: a served flow needs a Prefect server to schedule its "
            "runs (e.g. `prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api)"
        )
    prefect_env()
    from flows.training import train_pipeline

    train_pipeline.serve(
        name=name,
        cron=cron,
        parameters={"config": cfg.model_dump(mode="json")},
        tags=["pbf", "retrain"],
        description="Retrain the PBF defect segmenter and gate it into the registry.",
    )


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
    say(f"packaged {tag} into {home}")
    say(f"serve: BENTOML_HOME={home} .venv/bin/bentoml serve service:DefectService")
