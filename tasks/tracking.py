"""All MLflow code of the pipeline: runs, metrics, artifacts, both model variants, the registry.

Where runs go: ``PBF_TRACKING_URI``, else ``MLFLOW_TRACKING_URI``, else a SQLite database plus
an artifact directory inside the state directory (``PBF_STATE_DIR``, default ``.pbf``). Every
call names its run explicitly (``MlflowClient`` and ``run_id=``), never MLflow's thread-local
"active run", because Prefect tasks may run on other threads than the flow.

Registry layout: each training run registers two versions of ``pbf-defect-segmenter`` (the
``Settings.registry_name``), the int8 and the fp32 ONNX file, tagged with ``variant``,
``data_digest``, ``run_id`` and the headline metrics. Aliases: ``champion`` → the int8 version the
service serves, ``champion-fp32`` → its fp32 sibling; likewise ``challenger``/``challenger-fp32``
for a candidate that did not pass the promotion gate.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger

from pbf_core.config import PipelineConfig, Settings
from pbf_core.evaluation.promotion import CHALLENGER, CHAMPION, Decision

#: Where ``mlflow ui`` serves a local tracking store (the summary prints the command).
LOCAL_UI_URL = "http://127.0.0.1:5000"
#: Alias of each variant for a promoted and for a rejected candidate.
ALIASES = {
    CHAMPION: {"int8": CHAMPION, "fp32": f"{CHAMPION}-fp32"},
    CHALLENGER: {"int8": CHALLENGER, "fp32": f"{CHALLENGER}-fp32"},
}
_MAX_PARAMS_PER_CALL = 100
_MAX_PARAM_CHARS = 6000


class TrackingError(RuntimeError):
    """A registry update failed and was rolled back; names the model and what was restored."""


@dataclass(frozen=True)
class Store:
    """Resolved tracking locations.

    Attributes:
        uri: tracking (and registry) URI.
        artifact_root: artifact location of new experiments (``file:`` URI) for the local
            default store; None for a tracking server, which decides itself.
        ui_url: where the MLflow UI for this store is reached.
        registry_name: registered model name.
    """

    uri: str
    artifact_root: str | None
    ui_url: str
    registry_name: str

    @property
    def is_local(self) -> bool:
        return self.artifact_root is not None


def resolve_store(settings: Settings | None = None) -> Store:
    """Tracking URI from the environment, or the SQLite default under the state directory.

    A SQLite store (the default or one named by URI) keeps its artifacts in ``artifacts/`` next
    to the database file; a tracking server decides where artifacts go.
    """
    settings = settings or Settings()
    uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        root = (settings.state_dir / "mlflow").resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
    if uri.startswith(("http://", "https://")):
        return Store(uri, None, uri.rstrip("/"), settings.registry_name)
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return Store(uri, artifacts, LOCAL_UI_URL, settings.registry_name)


def ui_command(store: Store) -> str:
    """Shell command that serves the MLflow UI for ``store`` (empty for a tracking server)."""
    if not store.is_local:
        return ""
    return f"mlflow ui --backend-store-uri {store.uri} --port {LOCAL_UI_URL.rsplit(':', 1)[1]}"


def client(store: Store | None = None):
    """An ``MlflowClient`` for ``store``; also points MLflow's model logging at it."""
    import mlflow

    store = store or resolve_store()
    # mlflow.<flavor>.log_model resolves the store globally; it is the same for the process.
    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow.MlflowClient(store.uri, store.uri)


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


def evaluation_metrics(evaluation: Mapping[str, Any], prefix: str = "test") -> dict[str, float]:
    """``pbf_core.evaluation.evaluate`` output → flat ``<prefix>/<labels>/<metric>`` numbers."""
    out: dict[str, float] = {}
    for labels in ("truth", "weak"):
        scores = evaluation.get(labels)
        if not scores:
            continue
        flat = {
            **scores["pixel"],
            **scores["instance"],
            "average_precision": scores["average_precision"],
            "best_dice": scores["best_dice"],
        }
        for name, value in flat.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{prefix}/{labels}/{name}"] = float(value)
    out[f"{prefix}/threshold"] = float(evaluation["threshold"])
    return out


def gate_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """Evaluation → the ``"<labels>/<metric>"`` keys of :class:`pbf_core.promotion.Scores`."""
    flat = evaluation_metrics(evaluation)
    return {k.split("/", 1)[1]: v for k, v in flat.items() if k.count("/") == 2}


@task(name="start-tracking-run", retries=2, retry_delay_seconds=5)
def start_run(config: PipelineConfig, dataset: dict, flow_run_url: str | None = None) -> dict:
    """Open the MLflow run: experiment per dataset, the whole config as params, the dataset input.

    Args:
        config: the pipeline config (logged flattened, one param per field).
        dataset: ``summarize_dataset`` output (``name``, ``path``, ``digest``, ``report``).
        flow_run_url: the Prefect flow run, tagged on the MLflow run.

    Returns:
        ``{"run_id", "experiment_id", "url"}``.
    """
    store = resolve_store()
    mc = client(store)
    name = experiment_name(dataset["name"])
    exp = mc.get_experiment_by_name(name)
    if exp is None:
        location = f"{store.artifact_root}/{name}" if store.is_local else None
        exp_id = mc.create_experiment(name, location)
    else:
        exp_id = exp.experiment_id
    tags = {"pbf.dataset": dataset["name"], "pbf.data_digest": dataset["digest"]}
    if flow_run_url:
        tags["prefect.flow_run_url"] = flow_run_url
    run = mc.create_run(
        exp_id, tags=tags, run_name=f"{dataset['name']}-{time.strftime('%m%d-%H%M%S')}"
    )
    run_id = run.info.run_id
    try:
        _log_run_inputs(mc, run_id, config, dataset)
    except Exception:
        # A retry opens a fresh run; this half-filled one must not look like a real result.
        mc.set_terminated(run_id, "FAILED")
        raise
    return {"run_id": run_id, "experiment_id": exp_id, "url": run_url(store, exp_id, run_id)}


def _log_run_inputs(mc, run_id: str, config: PipelineConfig, dataset: dict) -> None:
    from mlflow.entities import DatasetInput, InputTag, Param

    params = [
        Param(
            k, (json.dumps(v) if isinstance(v, list | tuple | dict) else str(v))[:_MAX_PARAM_CHARS]
        )
        for k, v in flatten(config.model_dump(mode="json")).items()
    ]
    for i in range(0, len(params), _MAX_PARAMS_PER_CALL):
        mc.log_batch(run_id, params=params[i : i + _MAX_PARAMS_PER_CALL])
    mc.log_dict(run_id, config.model_dump(mode="json"), "config.json")
    context = InputTag("mlflow.data.context", "training")
    mc.log_inputs(run_id, datasets=[DatasetInput(_dataset_entity(dataset), [context])])
    mc.log_dict(run_id, dataset["report"], "data/prepare_report.json")
    if dataset["report"].get("label_quality"):
        mc.log_dict(run_id, dataset["report"]["label_quality"], "data/label_quality.json")


def _dataset_entity(dataset: dict):
    """The prepared dataset as an MLflow dataset: local source, content digest, layer count."""
    from mlflow.entities import Dataset

    return Dataset(
        name=dataset["name"],
        digest=dataset["digest"][:36],
        source_type="local",
        source=json.dumps({"uri": str(Path(dataset["path"]).resolve())}),
        profile=json.dumps({"layers": dataset.get("layers"), "sha256": dataset["digest"]}),
    )


def epoch_logger(run_id: str, prefix: str = "epoch") -> Callable[[dict[str, float]], None]:
    """A ``fit(on_epoch_end=...)`` callback logging each epoch's numbers at ``step=epoch``."""
    from mlflow.entities import Metric

    mc = client()

    def log(metrics: dict[str, float]) -> None:
        step = int(metrics.get("epoch", 0))
        now = int(time.time() * 1000)
        batch = [
            Metric(f"{prefix}/{k}", float(v), now, step)
            for k, v in metrics.items()
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
        ]
        mc.log_batch(run_id, metrics=batch)

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
        # A step shorter than one sampling interval would otherwise leave the run without any.
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


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    mc = client()
    for i in range(0, len(batch), 500):
        mc.log_batch(run_id, metrics=batch[i : i + 500])


@task(name="log-artifacts", retries=2, retry_delay_seconds=5)
def log_artifacts(
    run_id: str, directory: str, artifact_path: str, metrics: dict | None = None
) -> None:
    """Upload a directory of report files (plots, tables, overlays) and optional metrics."""
    mc = client()
    mc.log_artifacts(run_id, directory, artifact_path)
    if metrics:
        log_metrics(run_id, metrics)


def _signature(channels: int):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        Schema([TensorSpec(np.dtype("float32"), (-1, channels, -1, -1), "image")]),
        Schema([TensorSpec(np.dtype("float32"), (-1, 1, -1, -1), "logits")]),
    )


def _log_onnx(
    store: Store,
    run_id: str,
    experiment_id: str,
    variant: str,
    path: Path,
    channels: int,
    tags: dict,
):
    import mlflow
    import mlflow.onnx
    import numpy as np
    import onnx
    import onnxruntime

    # The LoggedModel must live in the run's experiment (MLflow defaults to the active one).
    logged = mlflow.initialize_logged_model(
        name=variant, source_run_id=run_id, experiment_id=experiment_id, tags=tags
    )
    example = np.zeros((1, channels, 64, 64), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.onnx.log_model(
            onnx.load_model(str(path)),
            name=variant,
            run_id=run_id,
            model_id=logged.model_id,
            signature=_signature(channels),
            input_example=example,
            pip_requirements=[
                f"onnxruntime=={onnxruntime.__version__}",
                f"onnx=={onnx.__version__}",
                "numpy",
            ],
            onnx_execution_providers=["CPUExecutionProvider"],
            save_as_external_data=False,
            tags=tags,
        )


@task(name="log-and-register", retries=1, retry_delay_seconds=5)
def register_variants(
    tracking: dict,
    models: dict,
    data_digest: str,
    metrics: Mapping[str, float],
    channels: int,
) -> dict:
    """Log the fp32 and int8 ONNX files as MLflow models and register both, or neither.

    Args:
        tracking: ``start_run`` output.
        models: ``{"fp32": path, "int8": path, "parity": {...}}`` from the quantize step.
        data_digest: digest of the training data.
        metrics: headline metrics, tagged on each version.
        channels: model input channels (the signature).

    Returns:
        ``{"fp32": version, "int8": version}`` (version numbers as strings).

    Raises:
        TrackingError: registration failed; versions created by this call were deleted.
    """
    store = resolve_store()
    mc = client(store)
    run_id = tracking["run_id"]
    name = store.registry_name
    with suppress(Exception):
        mc.create_registered_model(
            name, description="U-Net defect segmenter for PBF layer images (ONNX fp32 and int8)"
        )
    base_tags = {"data_digest": data_digest, "run_id": run_id}
    base_tags.update({f"metric.{k}": f"{v:.4f}" for k, v in metrics.items()})
    logged = {}
    for variant in ("fp32", "int8"):
        tags = {**base_tags, "variant": variant}
        if variant == "int8":
            tags["parity"] = "passed" if models["parity"].get("passed") else "failed"
        info = _log_onnx(
            store, run_id, tracking["experiment_id"], variant, Path(models[variant]), channels, tags
        )
        logged[variant] = (info, tags)
    created: dict[str, str] = {}
    try:
        for variant, (info, tags) in logged.items():
            mv = mc.create_model_version(
                name,
                info.model_uri,
                run_id=run_id,
                tags=tags,
                run_link=tracking["url"],
                model_id=info.model_id,
            )
            created[variant] = str(mv.version)
    except Exception as exc:
        for version in created.values():
            with suppress(Exception):
                mc.delete_model_version(name, version)
        raise TrackingError(
            f"{name}: registering the {len(logged)} variants failed ({exc}); removed {created}"
        ) from exc
    mc.set_tag(run_id, "pbf.registered_versions", json.dumps(created))
    return created


def _alias_version(mc, name: str, alias: str):
    """The model version ``alias`` points to; None when the model or the alias does not exist.

    Any other failure (server down, permissions) is raised: "no champion" must never be
    concluded from an unreachable registry.
    """
    from mlflow.exceptions import MlflowException

    try:
        return mc.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        missing = exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
        if missing and "not found" in str(exc):
            return None
        raise


@task(name="fetch-champion", retries=2, retry_delay_seconds=5)
def fetch_alias(alias: str, out_dir: str) -> dict | None:
    """Download the ONNX file the registry's ``alias`` points to, or None if there is none.

    Returns:
        ``{"version", "path", "run_id", "tags"}``.
    """
    import mlflow

    store = resolve_store()
    mc = client(store)
    mv = _alias_version(mc, store.registry_name, alias)
    if mv is None:
        return None
    local = mlflow.artifacts.download_artifacts(
        f"models:/{store.registry_name}/{mv.version}", dst_path=out_dir
    )
    onnx_file = next(Path(local).rglob("*.onnx"))
    return {
        "version": str(mv.version),
        "path": str(onnx_file),
        "run_id": mv.run_id,
        "tags": dict(mv.tags),
    }


@task(name="promote", retries=0)
def apply_decision(tracking: dict, versions: dict, decision: Decision) -> dict:
    """Point the aliases at the new versions: champion* on promotion, challenger* otherwise.

    The aliases move last and together; if one fails, every alias this call touched is put back
    where it was, so the registry never serves a half-updated champion.

    Returns:
        ``{"alias": ..., "aliases": {alias: version}, "previous": {alias: version or None}}``.

    Raises:
        TrackingError: an alias could not be set (after the rollback).
    """
    store = resolve_store()
    mc = client(store)
    name = store.registry_name
    run_id = tracking["run_id"]
    targets = {ALIASES[decision.alias][v]: versions[v] for v in ("int8", "fp32")}
    previous: dict[str, str | None] = {}
    for alias in targets:
        mv = _alias_version(mc, name, alias)
        previous[alias] = None if mv is None else str(mv.version)
    try:
        for alias, version in targets.items():
            mc.set_registered_model_alias(name, alias, version)
    except Exception as exc:
        for alias, version in previous.items():
            with suppress(Exception):
                if version is None:
                    mc.delete_registered_model_alias(name, alias)
                else:
                    mc.set_registered_model_alias(name, alias, version)
        raise TrackingError(
            f"{name}: setting {targets} failed ({exc}); restored {previous}"
        ) from exc
    for version in versions.values():
        mc.set_model_version_tag(name, version, "promotion", decision.alias)
        mc.set_model_version_tag(name, version, "promotion_reason", decision.reason[:5000])
    mc.set_tag(run_id, "pbf.promotion", decision.alias)
    mc.set_tag(run_id, "pbf.promotion_reason", decision.reason[:5000])
    mc.log_dict(
        run_id, {**decision.to_dict(), "aliases": targets, "previous": previous}, "promotion.json"
    )
    _logger().info("%s → %s (%s)", name, targets, decision.reason)
    return {"alias": decision.alias, "aliases": targets, "previous": previous}


@task(name="finish-tracking-run")
def finish_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status)


@task(name="champion-version", retries=2, retry_delay_seconds=5)
def champion_version() -> str | None:
    """Version the ``champion`` alias points to now (the int8 variant), or None."""
    found = champion_summary()
    return found["version"] if found else None


def champion_summary(settings: Settings | None = None) -> dict | None:
    """The registry's current champion: version, fp32 sibling, tags; None when there is none."""
    store = resolve_store(settings)
    mc = client(store)
    champ = _alias_version(mc, store.registry_name, CHAMPION)
    if champ is None:
        return None
    out = {"name": store.registry_name, "version": str(champ.version), "tags": dict(champ.tags)}
    fp32 = _alias_version(mc, store.registry_name, f"{CHAMPION}-fp32")
    if fp32 is not None:
        out["fp32_version"] = str(fp32.version)
    return out


def _logger():
    """The task run's logger (shown in the Prefect UI), or a plain one outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("pbf.tracking")
