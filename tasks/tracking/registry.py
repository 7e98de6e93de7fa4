"""The model registry: both variants of a run as versions, the aliases that name the champion
(moved together, rolled back together), and downloading the version an alias points at.

Layout: each training run registers two versions of ``pbf-defect-segmenter`` (the
``Settings.registry_name``), the int8 and the fp32 ONNX file, tagged with ``variant``,
``data_digest``, ``run_id`` and the headline metrics. Aliases: ``champion`` → the int8 version
the service serves, ``champion-fp32`` → its fp32 sibling; likewise ``challenger``/
``challenger-fp32`` for a candidate that did not pass the promotion gate.
"""

from __future__ import annotations

import json
import warnings
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pbf_core
from pbf_core.config import Settings
from pbf_core.data.dataset import PreparedDataset
from pbf_core.deploy.quantization import QuantizedModel
from pbf_core.evaluation.promotion import CHALLENGER, CHAMPION, Decision
from pbf_core.evaluation.scores import HEADLINE, Evaluation
from pbf_core.summary import RegisteredVersions, TrackingRun
from tasks.tracking.faults import tracking_step
from tasks.tracking.store import client, resolve_store

#: Alias of each variant for a promoted and for a rejected candidate.
ALIASES = {
    CHAMPION: {"int8": CHAMPION, "fp32": f"{CHAMPION}-fp32"},
    CHALLENGER: {"int8": CHALLENGER, "fp32": f"{CHALLENGER}-fp32"},
}


class TrackingError(RuntimeError):
    """A registry update failed and was rolled back; names the model and what was restored."""


@dataclass(frozen=True)
class RegisteredFile:
    """A registered version's ONNX file, downloaded."""

    version: str
    path: Path
    run_id: str
    tags: dict[str, str]


#: The pyfunc model logged for every version (MLflow's models-from-code: this file is the model).
PYFUNC_MODEL = Path(__file__).with_name("pyfunc_model.py")
#: The domain library the pyfunc model runs, copied into the logged model.
CORE_PACKAGE = Path(pbf_core.__file__).resolve().parent


def _signature(views: tuple[str, ...]):
    """Input: ``image`` or one column per view (encoded files); output: the prediction record."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    names = dict.fromkeys(("image", *views))  # a single-view model's one view is `image`
    inputs = [ColSpec("binary", name, required=False) for name in names]
    outputs = [
        ColSpec(kind, name)
        for kind, name in [
            ("boolean", "is_defective"), ("double", "threshold"), ("double", "prob_max"),
            ("double", "prob_mean"), ("double", "prob_p99"), ("double", "defect_area_pct"),
            ("long", "num_components"), ("string", "components"), ("long", "width"),
            ("long", "height"), ("string", "mask_png"),
        ]
    ]  # fmt: skip
    return ModelSignature(Schema(inputs), Schema(outputs))


def _requirements() -> list[str]:
    """What the logged model needs besides ``pbf_core`` (which it carries), pinned as here."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("onnxruntime", "onnx", "numpy", "opencv-python-headless", "pillow", "pandas")
    names += ("pydantic", "scipy")
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def _log_onnx(run: TrackingRun, variant: str, path: Path, views: tuple[str, ...], tags: dict):
    """Log one ONNX file as the run's pyfunc model (see :mod:`tasks.tracking.pyfunc_model`)."""
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import Model

    client()  # points mlflow's module-level logging at the store
    logged = mlflow.initialize_logged_model(
        name=variant, source_run_id=run.run_id, experiment_id=run.experiment_id, tags=tags
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Model.log(
            artifact_path=None,
            flavor=mlflow.pyfunc,
            name=variant,
            run_id=run.run_id,
            model_id=logged.model_id,
            python_model=str(PYFUNC_MODEL),
            artifacts={"onnx": str(path)},
            code_paths=[str(CORE_PACKAGE)],
            signature=_signature(views),
            pip_requirements=_requirements(),
            tags=tags,
        )


def _version_tags(
    run: TrackingRun, quantized: QuantizedModel, dataset: PreparedDataset, evaluation: Evaluation
) -> dict[str, dict[str, str]]:
    base = {"data_digest": dataset.digest, "run_id": run.run_id}
    gate = evaluation.gate_metrics()
    base.update({f"metric.{k}": f"{v:.4f}" for k, v in gate.items() if k.split("/")[1] in HEADLINE})
    parity = "passed" if quantized.int8_parity.passed else "failed"
    return {
        "fp32": {**base, "variant": "fp32"},
        "int8": {**base, "variant": "int8", "parity": parity},
    }


@tracking_step("registering the model versions")
def register_variants(
    run: TrackingRun, quantized: QuantizedModel, dataset: PreparedDataset, evaluation: Evaluation
) -> RegisteredVersions:
    """Log the fp32 and int8 ONNX files as MLflow models and register both, or neither.

    Raises:
        TrackingError: registration failed; versions created by this call were deleted.
    """
    store = resolve_store()
    mc, name = client(store), store.registry_name
    with suppress(Exception):
        mc.create_registered_model(
            name, description="U-Net defect segmenter for PBF layer images (ONNX fp32 and int8)"
        )
    tags = _version_tags(run, quantized, dataset, evaluation)
    files = {"fp32": quantized.fp32, "int8": quantized.int8}
    logged = {v: _log_onnx(run, v, files[v], dataset.views, tags[v]) for v in ("fp32", "int8")}
    created: dict[str, str] = {}
    try:
        for variant, info in logged.items():
            mv = mc.create_model_version(
                name, info.model_uri, run_id=run.run_id, tags=tags[variant],
                run_link=run.url, model_id=info.model_id,
            )  # fmt: skip
            created[variant] = str(mv.version)
    except Exception as exc:
        for version in created.values():
            with suppress(Exception):
                mc.delete_model_version(name, version)
        raise TrackingError(
            f"{name}: registering the {len(logged)} variants failed ({exc}); removed {created}"
        ) from exc
    mc.set_tag(run.run_id, "pbf.registered_versions", json.dumps(created))
    return RegisteredVersions(int8=created["int8"], fp32=created["fp32"])


def alias_version(mc, name: str, alias: str):
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


@tracking_step("downloading a registered model")
def download_alias(
    alias: str, out_dir: str | Path, settings: Settings | None = None
) -> RegisteredFile | None:
    """Download the ONNX file the registry's ``alias`` points to; None when there is none.

    The one place that turns an alias into a file: the pipeline (scoring the champion),
    ``pbf package`` and the service (``PBF_SERVE_SOURCE=tracking``) all call it.
    """
    import mlflow

    store = resolve_store(settings)
    mc = client(store)
    mv = alias_version(mc, store.registry_name, alias)
    if mv is None:
        return None
    local = mlflow.artifacts.download_artifacts(
        f"models:/{store.registry_name}/{mv.version}", dst_path=str(out_dir)
    )
    onnx_file = next(Path(local).rglob("*.onnx"))
    return RegisteredFile(str(mv.version), onnx_file, mv.run_id, dict(mv.tags))


def _set_aliases(mc, name: str, targets: dict[str, str]) -> dict[str, str | None]:
    """Point every alias at its version; on any failure put back what was there, then raise."""
    previous: dict[str, str | None] = {}
    for alias in targets:
        mv = alias_version(mc, name, alias)
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
    return previous


@tracking_step("moving the registry aliases")
def apply_decision(run: TrackingRun, versions: RegisteredVersions, decision: Decision) -> dict:
    """Point the aliases at the new versions: champion* on promotion, challenger* otherwise.

    The aliases move last and together; if one fails, every alias this call touched is put back
    where it was, so the registry never serves a half-updated champion.

    Returns:
        ``{"alias", "aliases": {alias: version}, "previous": {alias: version or None}}``.

    Raises:
        TrackingError: an alias could not be set (after the rollback).
    """
    store = resolve_store()
    mc, name = client(store), store.registry_name
    by_variant = versions.to_dict()
    targets = {ALIASES[decision.alias][v]: by_variant[v] for v in ("int8", "fp32")}
    previous = _set_aliases(mc, name, targets)
    for version in by_variant.values():
        mc.set_model_version_tag(name, version, "promotion", decision.alias)
        mc.set_model_version_tag(name, version, "promotion_reason", decision.reason[:5000])
    mc.set_tag(run.run_id, "pbf.promotion", decision.alias)
    mc.set_tag(run.run_id, "pbf.promotion_reason", decision.reason[:5000])
    record = {**decision.to_dict(), "aliases": targets, "previous": previous}
    mc.log_dict(run.run_id, record, "promotion.json")
    return {"alias": decision.alias, "aliases": targets, "previous": previous}


@tracking_step("reading the champion")
def champion_summary(settings: Settings | None = None) -> dict | None:
    """The registry's current champion: version, fp32 sibling, tags; None when there is none."""
    store = resolve_store(settings)
    mc = client(store)
    champ = alias_version(mc, store.registry_name, CHAMPION)
    if champ is None:
        return None
    out = {"name": store.registry_name, "version": str(champ.version), "tags": dict(champ.tags)}
    fp32 = alias_version(mc, store.registry_name, f"{CHAMPION}-fp32")
    if fp32 is not None:
        out["fp32_version"] = str(fp32.version)
    return out


@tracking_step("reading the champion")
def champion_run_id(settings: Settings | None = None) -> str | None:
    """The MLflow run that trained the registry's current champion; None when there is none."""
    store = resolve_store(settings)
    champ = alias_version(client(store), store.registry_name, CHAMPION)
    return None if champ is None else champ.run_id


def download_champion(settings: Settings | None = None) -> RegisteredFile:
    """The champion's int8 ONNX, downloaded under ``<state dir>/models/champion``.

    Raises:
        CheckpointError: the registry has no champion.
    """
    from pbf_core.errors import CheckpointError

    settings = settings or Settings()
    state = settings.state_dir.resolve()
    found = download_alias(CHAMPION, state / "models" / "champion", settings)
    if found is None:
        raise CheckpointError(
            state, "the registry has no champion yet; run `pbf run` or pass a model file"
        )
    return found
