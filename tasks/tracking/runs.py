"""A pipeline run in MLflow: one experiment per dataset, the config as params, the dataset as an
input, per-epoch and final metrics, host metrics while training, report directories as artifacts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pbf_core.bench.report import BenchmarkReport
from pbf_core.config import PipelineConfig
from pbf_core.data.dataset import PreparedDataset
from pbf_core.deploy.quantization import QuantizedModel
from pbf_core.evaluation.scores import HEADLINE, metric_key
from pbf_core.redaction import redact, without_credentials
from pbf_core.summary import TrackingRun
from tasks.tracking.faults import remember_failed, settle_failed, tracking_step
from tasks.tracking.store import Store, client, resolve_store

_MAX_PARAMS_PER_CALL = 100
_MAX_PARAM_CHARS = 6000
_MAX_METRICS_PER_CALL = 500


def experiment_name(dataset: str) -> str:
    """One experiment per dataset, so every run in it is comparable."""
    return f"pbf-{dataset}"


def run_url(store: Store, experiment_id: str, run_id: str) -> str:
    return f"{store.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings → one level, keys joined with ``sep``; lists and tuples kept as values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def _experiment(mc, store: Store, name: str) -> str:
    exp = mc.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mc.create_experiment(name, f"{store.artifact_root}/{name}" if store.is_local else None)


@tracking_step("opening the MLflow run")
def start_run(
    config: PipelineConfig, dataset: PreparedDataset, flow_run_url: str | None = None
) -> TrackingRun:
    """Open the MLflow run: experiment per dataset, the whole config as params, the dataset input.

    A half-filled run (logging the inputs failed) is marked FAILED before the error propagates.
    """
    store = resolve_store()
    mc = client(store)
    settle_failed(mc)  # runs an earlier dead server left RUNNING
    exp_id = _experiment(mc, store, experiment_name(dataset.name))
    tags = {"pbf.dataset": dataset.name, "pbf.data_digest": dataset.digest}
    if flow_run_url:
        tags["prefect.flow_run_url"] = without_credentials(flow_run_url)
    name = f"{dataset.name}-{time.strftime('%m%d-%H%M%S')}"
    run_id = mc.create_run(exp_id, tags=tags, run_name=name).info.run_id
    try:
        _declare_headline(mc, run_id, dataset)
        _log_inputs(mc, run_id, config, dataset)
    except Exception:
        fail_run(run_id)
        raise
    return TrackingRun(run_id, exp_id, run_url(store, exp_id, run_id))


def headline_metrics(dataset: PreparedDataset) -> list[str]:
    """The scores a user compares runs on (:data:`~pbf_core.evaluation.scores.HEADLINE`),
    against true masks when the dataset has them; what the compare view should open on."""
    has_truth = any(entry.truth for entry in dataset.manifest.layers)
    labels = ("truth", "weak") if has_truth else ("weak",)
    return [metric_key(label, score) for label in labels for score in HEADLINE]


def _declare_headline(mc, run_id: str, dataset: PreparedDataset) -> None:
    """Log the headline scores first, as NaN ("not measured yet") at step -1.

    MLflow's compare page opens its plots on the first metric that differs between the runs, in
    the order each run first logged them (MLflow 3.17: the store's order); without this it opened
    on a system metric. The evaluation logs the real values at step 0, which the run shows.
    """
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    nan = float("nan")
    mc.log_batch(run_id, metrics=[Metric(k, nan, now, -1) for k in headline_metrics(dataset)])


def _log_inputs(mc, run_id: str, config: PipelineConfig, dataset: PreparedDataset) -> None:
    from mlflow.entities import DatasetInput, InputTag, Param

    params = [
        Param(k, redact(json.dumps(v) if isinstance(v, list | dict) else str(v))[:_MAX_PARAM_CHARS])
        for k, v in flatten(config.model_dump(mode="json")).items()
    ]
    for i in range(0, len(params), _MAX_PARAMS_PER_CALL):
        mc.log_batch(run_id, params=params[i : i + _MAX_PARAMS_PER_CALL])
    mc.log_dict(run_id, config.model_dump(mode="json"), "config.json")
    context = InputTag("mlflow.data.context", "training")
    mc.log_inputs(run_id, datasets=[DatasetInput(_dataset_entity(dataset), [context])])
    mc.log_dict(run_id, dict(dataset.report), "data/prepare_report.json")
    if dataset.report.get("label_quality"):
        mc.log_dict(run_id, dataset.report["label_quality"], "data/label_quality.json")
    if dataset.split is not None:
        mc.log_dict(run_id, dataset.split.to_dict(), "data/split.json")


def _dataset_entity(dataset: PreparedDataset):
    """The prepared dataset as an MLflow dataset: local source, content digest, layer count."""
    from mlflow.entities import Dataset

    return Dataset(
        name=dataset.name,
        digest=dataset.digest[:36],
        source_type="local",
        source=json.dumps({"uri": str(Path(dataset.path).resolve())}),
        profile=json.dumps({"layers": dataset.layers, "sha256": dataset.digest}),
    )


@tracking_step("logging metrics")
def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Numbers at ``step``, in as few calls as MLflow allows."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    mc = client()
    for i in range(0, len(batch), _MAX_METRICS_PER_CALL):
        mc.log_batch(run_id, metrics=batch[i : i + _MAX_METRICS_PER_CALL])


def epoch_logger(run_id: str, prefix: str = "epoch") -> Callable[[dict[str, float]], None]:
    """A ``fit(on_epoch_end=...)`` callback logging each epoch's numbers at ``step=epoch``."""

    def log(metrics: dict[str, float]) -> None:
        numbers = {
            f"{prefix}/{k}": v
            for k, v in metrics.items()
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
        }
        log_metrics(run_id, numbers, step=int(metrics.get("epoch", 0)))

    return log


@contextmanager
def system_metrics(run_id: str, interval_s: float = 5.0) -> Iterator[None]:
    """Log CPU, memory, disk, network (and GPU when present) of this process's host while inside."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=interval_s,
        samples_before_logging=1,
        tracking_uri=resolve_store().uri,
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
    # Only after the step succeeded: a failed step's own error must not be replaced by a call to
    # a server that may be the reason it failed.
    _ensure_system_metrics(run_id)


@tracking_step("logging system metrics")
def _ensure_system_metrics(run_id: str) -> None:
    """A step shorter than one sampling interval would otherwise leave the run without any."""
    if not any(k.startswith("system/") for k in client().get_run(run_id).data.metrics):
        log_metrics(run_id, _system_snapshot())


def _system_snapshot() -> dict[str, float]:
    import psutil

    mem = psutil.virtual_memory()
    return {
        "system/cpu_utilization_percentage": psutil.cpu_percent(interval=0.1),
        "system/system_memory_usage_megabytes": mem.used / 2**20,
        "system/system_memory_usage_percentage": mem.percent,
    }


@tracking_step("uploading artifacts")
def log_artifacts(
    run_id: str, directory: str | Path, artifact_path: str, metrics: Mapping | None = None
) -> None:
    """Upload a directory of report files (plots, tables, overlays) and optional metrics."""
    client().log_artifacts(run_id, str(directory), artifact_path)
    if metrics:
        log_metrics(run_id, metrics)


def benchmark_metrics(report: BenchmarkReport) -> dict[str, float]:
    """Benchmark report → flat ``bench/<variant>/<measure>`` numbers."""
    out: dict[str, float] = {}
    for res in report.variants:
        key = f"bench/{res.name}"
        out[f"{key}/size_mb"] = res.size_mb
        out[f"{key}/peak_rss_mb"] = res.peak_rss_mb
        for side, lat in res.latency.items():
            out[f"{key}/p50_ms_{side}"] = lat.p50_ms
            out[f"{key}/p95_ms_{side}"] = lat.p95_ms
        for side, ips in res.throughput.items():
            out[f"{key}/throughput_{side}"] = ips
        for side, x in report.speedups(res).items():
            out[f"{key}/speedup_{side}"] = x
        if res.parity:
            out[f"{key}/parity_dice"] = res.parity["dice"]
            out[f"{key}/parity_recall"] = res.parity["recall"]
    return out


def parity_metrics(quantized: QuantizedModel) -> dict[str, float]:
    """The quantize step's gate → flat ``parity/<variant>/<measure>`` numbers and thresholds."""
    out = {
        f"parity/{name}/{k}": float(v)
        for name, parity in quantized.parity.items()
        for k, v in parity.to_dict().items()
        if isinstance(v, int | float)
    }
    out.update({f"parity/{name}/threshold": t for name, t in quantized.thresholds.items()})
    return out


@tracking_step("ending the MLflow run")
def finish_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status)


def fail_run(run_id: str) -> bool:
    """Mark the run ``FAILED``; never raises (it runs while another error propagates).

    Returns:
        False when the server did not answer: the run is noted and marked on the next run.
    """
    try:
        finish_run(run_id, "FAILED")
    except Exception:
        remember_failed(run_id)
        return False
    return True


BUILD_SCORES = "pbf-build-scores"


@tracking_step("logging the build score")
def log_build_score(
    build: str, model: str, model_version: str | None, runner: str, summary: Mapping, seconds: float
) -> str:
    """One MLflow run per build scoring, in the ``pbf-build-scores`` experiment, against the
    model version it used: params (build, model, version, runner), metrics (layers, flagged
    layers, 3D defects, layers/s) and the report as an artifact. Returns the run id."""
    store = resolve_store()
    mc = client(store)
    exp_id = _experiment(mc, store, BUILD_SCORES)
    tags = {"pbf.build": build, **({"pbf.model_version": model_version} if model_version else {})}
    run_id = mc.create_run(
        exp_id, tags=tags, run_name=f"{Path(build).name}-{time.strftime('%m%d-%H%M%S')}"
    ).info.run_id
    params = {
        "build": build,
        "model": model,
        "model_version": model_version or "-",
        "runner": runner,
    }
    for k, v in params.items():
        mc.log_param(run_id, k, v)
    metrics = {"layers": summary["layers"], "usable_layers": summary["usable"],
               "flagged_layers": len(summary["flagged"]), "defects_3d": summary["defects"],
               "scored_layers": summary["scored"],
               "layers_per_s": summary["scored"] / seconds if seconds > 0 else 0.0}  # fmt: skip
    log_metrics(run_id, metrics)
    report = Path(summary["report"])
    for name in ("report.html", "report.json", "summary.json"):
        if (report.parent / name).is_file():
            mc.log_artifact(run_id, str(report.parent / name), "report")
    mc.set_terminated(run_id, "FINISHED")
    return run_id
