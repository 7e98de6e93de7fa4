"""``pbf score``: every layer of a build scored, defects joined through the layers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import progress_bar, say


def score(
    build: Annotated[
        Path,
        typer.Argument(help="The build: Kaggle a/b/c dir or .zip, images folder, synthetic build."),
    ],
    out: Annotated[Path, typer.Option(help="Directory for the tables, masks and summary.")],
    min_area: Annotated[
        int, typer.Option(min=1, help="A layer is flagged when a component has this many px.")
    ] = 20,
    model: Annotated[
        Path | None,
        typer.Option(
            help="Model file: .onnx with pbf metadata (int8 or fp32) or .safetensors "
            "(default: the registry's champion, int8)."
        ),
    ] = None,
    runner: Annotated[
        str, typer.Option(help="local (this process) or dask (a cluster, see --dask-address).")
    ] = "local",
    dask_address: Annotated[
        str | None,
        typer.Option(help="An existing Dask scheduler, tcp://HOST:PORT (default: a LocalCluster)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="LocalCluster worker processes (default: one per core)."),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL the rows are upserted into (default: PBF_RESULTS_DB, else SQLite "
            "under the state directory); 'off' to skip."
        ),
    ] = None,
    track: Annotated[
        bool, typer.Option(help="Log the scoring to MLflow (experiment pbf-build-scores).")
    ] = True,
) -> None:
    """Score every layer of a build: parquet tables of layers, components and 3D defects.

    Layers already scored in OUT with the same model are reused, so an interrupted run resumes
    and a rerun scores nothing twice. Unusable layers are rows with the filter's reason.
    """
    from pbf_core.scoring.runners import Runner
    from pbf_core.steps import score_build

    try:
        how = Runner(runner, dask_address, workers)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--runner/--dask-address/--workers") from None
    version = None
    if model is None:
        model, version = _champion()
    started = time.perf_counter()
    with progress_bar("scoring layers") as progress:
        result = score_build(build, model, out, min_area, how, progress)
    seconds = time.perf_counter() - started
    summary = result.summary()
    say(f"{summary['verdict']} ({result.scored} layers scored, {result.reused} reused)")
    if database != "off":
        _to_database(database, build, model, result)
    if track:
        from tasks.tracking.runs import log_build_score

        report = {**summary, "report": str(out / "report.html")}
        run_id = log_build_score(str(build.resolve()), str(model), version, runner, report, seconds)
        say(f"MLflow run {run_id} (experiment pbf-build-scores)")
    for layer, reason in summary["unusable"].items():
        say(f"  unusable {layer}: {reason}")
    say(f"tables: {out}/layers.parquet, components.parquet, defects.parquet; {out}/summary.json")


def _to_database(database: str | None, build: Path, model: Path, result) -> None:
    from pbf_core.config import Settings
    from pbf_core.scoring.database import upsert_build

    url = database or Settings().results_url()
    rows = upsert_build(url, str(build.resolve()), result, model.name)
    say(f"database: {rows['pbf_layers']} layer rows, {rows['pbf_defects']} defects in {url}")


def _champion() -> tuple[Path, str]:
    """The registry champion's int8 ONNX, downloaded under the state directory."""
    from pbf_core.config import Settings
    from pbf_core.errors import CheckpointError
    from tasks.tracking.registry import download_alias

    state = Settings().state_dir.resolve()
    found = download_alias("champion", state / "models" / "champion")
    if found is None:
        raise CheckpointError(
            state, "the registry has no champion yet; run `pbf run` or pass --model"
        )
    say(f"model: the champion, version {found.version} ({found.path.name})")
    return Path(found.path), found.version
