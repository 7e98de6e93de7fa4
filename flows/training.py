"""The training pipeline: raw layers → prepared data → model → ONNX fp32/int8 → registry → gate.

Reads top to bottom like the data flow in ``DESIGN.md``; every task calls one step of
:mod:`pbf_core.steps`, the same functions the ``pbf`` commands call. One validated parameter,
:class:`pbf_core.config.PipelineConfig`, which Prefect renders as a form for deployments.
Everything is written under the state directory (``PBF_STATE_DIR``, default ``.pbf``).
"""

# No `from __future__ import annotations` here: Prefect builds the parameter model of a flow
# from its annotations in the process that runs it, and postponed (string) annotations there
# fail to resolve in a served or deployed run.

import hashlib
import os
import time
from pathlib import Path

from prefect import flow, unmapped
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from pbf_core.config import PipelineConfig, PrepareConfig, RunnerConfig, Settings
from pbf_core.steps import DiscoveredLayers, LayerOutcome, PreparedDataset, prepared_dir
from pbf_core.summary import RunSummary
from tasks import data, model, registry, reports, runs


def task_runner(cfg: RunnerConfig) -> TaskRunner:
    """The Prefect task runner the per-layer work is mapped over."""
    workers = cfg.workers or os.cpu_count() or 1
    if cfg.kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    return ThreadPoolTaskRunner(max_workers=workers)


@flow(name="prepare-layers", validate_parameters=False)
def prepare_layers(found: DiscoveredLayers, out: str, cfg: PrepareConfig) -> list[LayerOutcome]:
    """Filter, normalise and label every layer, mapped over the task runner, cached per layer."""
    fresh = not (Path(out) / "manifest.json").is_file()  # a half-written dataset is redone
    prepare = data.prepare_layer.with_options(refresh_cache=fresh)
    records = found.source.records
    return prepare.map(records, list(found.digests), unmapped(out), unmapped(cfg)).result()


def prepare_data(config: PipelineConfig, state: Path) -> PreparedDataset:
    """Ingest (the synthetic build by default, cached by its config), then prepare every layer."""
    started, name = time.time(), config.data.dataset_name
    raw = str(config.data.raw) if config.data.raw is not None else None
    if raw is None:
        key = hashlib.sha256(config.data.synth.model_dump_json().encode()).hexdigest()[:12]
        build = state / "data" / "raw" / f"synthetic-{key}"
        fresh = not (build / "manifest.json").is_file()
        raw = data.synthesize.with_options(refresh_cache=fresh)(config.data.synth, str(build))
    found = data.discover_layers(raw, str(state / "data" / "staging"))
    out = str(prepared_dir(state / "data" / "prepared", name, found.digest, config.prepare))
    runner = task_runner(config.runner)
    outcomes = prepare_layers.with_options(task_runner=runner)(found, out, config.prepare)
    elapsed = time.time() - started
    return data.write_dataset(name, found, outcomes, out, config.prepare, elapsed)


@flow(name="train-pipeline", log_prints=True)
def train_pipeline(config: PipelineConfig = PipelineConfig()) -> RunSummary:  # noqa: B008
    """Train, evaluate, export, quantize, benchmark, register, gate and package a segmenter.

    Args:
        config: data source (synthetic build by default), preparation, training (device
            included), quantization, benchmark, promotion and task-runner settings.

    Returns:
        The run's :class:`~pbf_core.summary.RunSummary`.
    """
    started, state = time.time(), Settings().state_dir.resolve()
    dataset = prepare_data(config, state)
    dataset = data.split_dataset(dataset, config.train)
    run = runs.start_run(config, dataset, _flow_run_url())
    out = state / "runs" / run.run_id
    try:
        trained = model.train(dataset, config.train, run, str(out / "model"))
        evaluation = model.evaluate(trained, dataset, run, str(out / "evaluation"))
        held_out = model.held_out(trained, config.held_out, run)
        exported = model.export(trained, str(out / "onnx" / "model.fp32.onnx"))
        quantized = model.quantize(exported, dataset, config.quantize, run, str(out / "onnx"))
        bench = model.benchmark(trained, quantized, config.benchmark, run, str(out / "benchmark"))
        versions = registry.register(run, quantized, dataset, evaluation)
        champion = registry.score_champion(dataset)
        decision = registry.decide(evaluation, champion, dataset, quantized, config.promotion)
        registry.promote(run, versions, decision)
        bento = registry.package_champion() if decision.promote else None
    except BaseException:
        runs.fail_run(run)
        raise
    runs.finish_run(run)
    summary = RunSummary(
        dataset=dataset,
        run=run,
        registry=Settings().registry_name,
        versions=versions,
        decision=decision,
        champion_version=registry.champion_version(),
        bento_model=bento,
        evaluation=evaluation,
        held_out=held_out,
        training=trained.history.summary(),
        speedup=bench.speedups(bench.result("onnx-int8")),
        parity=quantized.int8_parity,
        seconds=round(time.time() - started, 1),
    )
    reports.publish_summary(summary)
    return summary


def _flow_run_url() -> str | None:
    """This flow run's page in the Prefect UI, when a UI is known."""
    url = flow_run.get_flow_run_ui_url()
    return url if url and not url.startswith("None") else None
