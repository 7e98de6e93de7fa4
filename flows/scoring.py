"""The score-build flow: every layer of a build scored, mapped over a Prefect task runner.

The flow form of ``pbf score``, over the same steps (:mod:`pbf_core.scoring.build`): the build
is discovered, one ``score-layer`` task per layer runs on the chosen task runner (threads in
this process, or Dask: ``DaskTaskRunner`` on a ``LocalCluster`` of single-threaded workers on
127.0.0.1, or on an existing scheduler), and the 3D defects, tables and report are made at the
end. Layers already scored into ``out`` with the same model are reused, so a short schedule on
a build that is still printing (the ``watch`` deployment) scores only its new layers. A
markdown artifact links the report.
"""

# No `from __future__ import annotations`: Prefect resolves the parameters' annotations in the
# process that runs the flow (see flows/training.py).

import os
import time
from pathlib import Path

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from pbf_core.config import Settings
from pbf_core.data.layers import LayerRecord
from pbf_core.scoring.build import ScoringModel, discover_build, finish_build
from pbf_core.scoring.database import upsert_build
from pbf_core.scoring.layers import ScoredLayer
from pbf_core.scoring.runners import Runner, score_layer_file
from tasks.tracking.registry import download_champion


@task(name="score-layer", cache_policy=NO_CACHE, retries=1)
def score_layer(
    record: LayerRecord, index: int, digest: str, model: str, out: str, key: str, threads: int
) -> ScoredLayer:
    """Filter, segment and describe one layer (reused when already scored with this model)."""
    return score_layer_file(record, index, digest, model, out, key, threads)


def task_runner(runner: Runner) -> tuple[TaskRunner, int]:
    """The task runner the layers are mapped over, and the model's threads per task."""
    if runner.kind == "local":
        return ThreadPoolTaskRunner(max_workers=1), 0
    from prefect_dask import DaskTaskRunner

    if runner.address:
        return DaskTaskRunner(address=runner.address), 1
    workers = runner.workers or os.cpu_count() or 1
    kwargs = {"n_workers": workers, "threads_per_worker": 1, "host": "127.0.0.1",
              "dashboard_address": "127.0.0.1:0", "processes": True}  # fmt: skip
    return DaskTaskRunner(cluster_kwargs=kwargs), 1


@flow(name="score-layers", validate_parameters=False)
def score_layers(found, model: str, out: str, key: str, threads: int) -> list[ScoredLayer]:
    """One task per layer on this flow's task runner; results in build order."""
    records = found.source.records
    futures = score_layer.map(
        records, list(range(len(records))), list(found.digests),
        unmapped(model), unmapped(out), unmapped(key), unmapped(threads or None),
    )  # fmt: skip
    return futures.result()


@task(name="log-build-score", retries=1, retry_delay_seconds=5)
def log_build_score(
    build: str, model: str, version: str | None, runner: str, summary: dict, seconds: float
) -> str:
    """The scoring as an MLflow run against the model version it used; returns its id."""
    from tasks.tracking.runs import log_build_score as log

    return log(build, model, version, runner, summary, seconds)


@flow(name="score-build", log_prints=True)
def score_build(
    build: str,
    model: str = "",
    out: str = "",
    min_area: int = 20,
    runner: str = "local",
    dask_address: str = "",
    workers: int = 0,
    database: str = "",
) -> dict:
    """Score every layer of ``build``; write tables, masks and the report into ``out``.

    Args:
        build: the build's directory or zip (any layout ``pbf prepare`` reads).
        model: a model file; empty = the registry champion's int8 ONNX.
        out: output directory; empty = ``<state dir>/scores/<build name>``.
        min_area: a layer is flagged when one of its components has this many px.
        runner: ``local`` (one process) or ``dask``.
        dask_address: an existing Dask scheduler (``tcp://HOST:PORT``); empty = a LocalCluster.
        workers: LocalCluster workers; 0 = one per core.
        database: SQLAlchemy URL for the rows; empty = ``PBF_RESULTS_DB`` or SQLite in the
            state directory; ``off`` = none.

    Returns:
        The build's summary (``summary.json``) with the report's path.
    """
    how = Runner(runner, dask_address or None, workers or None)  # type: ignore[arg-type]
    state = Settings().state_dir.resolve()
    started = time.perf_counter()
    champion = None if model else download_champion()
    model_path = Path(model) if model else Path(champion.path)
    version = champion.version if champion else None
    target = Path(out) if out else state / "scores" / Path(build).name
    scoring = ScoringModel.open(model_path)
    found = discover_build(build, target)
    runner_, threads = task_runner(how)
    layers = score_layers.with_options(task_runner=runner_)(
        found, str(model_path), str(target), scoring.key, threads
    )
    result = finish_build(build, scoring, target, layers, found.source.records, min_area)
    summary = {**result.summary(), "report": str(target / "report.html")}
    if database != "off":
        url = database or Settings().results_url()
        upsert_build(url, str(Path(build).resolve()), result, model_path.name)
    seconds = time.perf_counter() - started
    summary["mlflow_run_id"] = log_build_score(
        str(Path(build).resolve()), str(model_path), version, runner, summary, seconds
    )
    _publish(build, model_path, target, result, summary)
    print(f"{summary['verdict']}; report {summary['report']}")
    return summary


def _publish(build: str, model: Path, target: Path, result, summary: dict) -> None:
    """The markdown artifact linking the report."""
    create_markdown_artifact(
        key="build-score",
        markdown=f"# {Path(build).name}\n\n**{summary['verdict']}** "
        f"({result.scored} layers scored, {result.reused} reused, model `{model.name}`)\n\n"
        f"Report: [{target / 'report.html'}](file://{target / 'report.html'})",
        description=f"build score of {Path(build).name}",
    )
