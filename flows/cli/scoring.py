"""``pbf score``: every layer of a build scored, defects joined through the layers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import progress_bar, say

BuildArg = Annotated[
    Path,
    typer.Argument(help="The build: Kaggle a/b/c dir or .zip, images folder, synthetic build."),
]
ModelOption = Annotated[
    Path | None,
    typer.Option(
        help="Model file: .onnx with pbf metadata (int8 or fp32) or .safetensors "
        "(default: the registry's champion, int8)."
    ),
]
RunnerOption = Annotated[
    str, typer.Option(help="local (this process) or dask (a cluster, see --dask-address).")
]
AddressOption = Annotated[
    str | None,
    typer.Option(help="An existing Dask scheduler, tcp://HOST:PORT (default: a LocalCluster)."),
]
WorkersOption = Annotated[
    int | None, typer.Option(min=1, help="LocalCluster worker processes (default: one per core).")
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        help="SQLAlchemy URL the rows are upserted into (default: PBF_RESULTS_DB, else SQLite "
        "under the state directory); 'off' to skip."
    ),
]


def score(
    build: BuildArg,
    out: Annotated[Path, typer.Option(help="Directory for the tables, masks and summary.")],
    min_area: Annotated[
        int, typer.Option(min=1, help="A layer is flagged when a component has this many px.")
    ] = 20,
    model: ModelOption = None,
    runner: RunnerOption = "local",
    dask_address: AddressOption = None,
    workers: WorkersOption = None,
    database: DatabaseOption = None,
    track: Annotated[
        bool, typer.Option(help="Log the scoring to MLflow (experiment pbf-build-scores).")
    ] = True,
) -> None:
    """Score every layer of a build: parquet tables of layers, components and 3D defects.

    Layers already scored in OUT with the same model are reused, so an interrupted run resumes
    and a rerun scores nothing twice. Unusable layers are rows with the filter's reason.
    """
    from pbf_core.steps import score_build

    how = _runner(runner, dask_address, workers)
    model, version = _model(model)
    started = time.perf_counter()
    with progress_bar("scoring layers") as progress:
        result = score_build(build, model, out, min_area, how, progress)
    seconds = time.perf_counter() - started
    summary = result.summary()
    say(f"{summary['verdict']} ({result.scored} layers scored, {result.reused} reused)")
    if database != "off":
        _to_database(database, build, model, result)
    if track:
        _to_mlflow(build, model, version, runner, {**summary, "report": str(out / "report.html")},
                   seconds)  # fmt: skip
    for layer, reason in summary["unusable"].items():
        say(f"  unusable {layer}: {reason}")
    say(f"tables: {out}/layers.parquet, components.parquet, defects.parquet; {out}/summary.json")


def _runner(kind: str, address: str | None, workers: int | None):
    from pbf_core.scoring.runners import Runner

    try:
        return Runner(kind, address, workers)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--runner/--dask-address/--workers") from None


def _model(model: Path | None) -> tuple[Path, str | None]:
    """The model file and its registry version: the given file, or the champion downloaded."""
    if model is not None:
        return model, None
    from tasks.tracking.registry import download_champion

    champion = download_champion()
    say(f"model: the champion, version {champion.version} ({champion.path.name})")
    return Path(champion.path), champion.version


def _to_mlflow(build: Path, model: Path, version, runner: str, summary: dict, seconds: float):
    from tasks.tracking.runs import log_build_score

    run_id = log_build_score(str(build.resolve()), str(model), version, runner, summary, seconds)
    say(f"MLflow run {run_id} (experiment pbf-build-scores)")


def _to_database(database: str | None, build: Path, model: Path, result) -> None:
    from pbf_core.config import Settings
    from pbf_core.redaction import redact
    from pbf_core.scoring.database import upsert_build

    url = database or Settings().results_url()
    rows = upsert_build(url, str(build.resolve()), result, model.name)
    say(
        f"database: {rows['pbf_layers']} layer rows, {rows['pbf_defects']} defects in {redact(url)}"
    )
