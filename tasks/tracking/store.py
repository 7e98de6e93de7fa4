"""Where runs and models go: the tracking URI, resolved once per process, and its client.

``PBF_TRACKING_URI``, else ``MLFLOW_TRACKING_URI``, else a SQLite database plus an artifact
directory inside the state directory (``PBF_STATE_DIR``, default ``.pbf``). Every call names its
run explicitly (``MlflowClient`` and ``run_id=``), never MLflow's thread-local "active run",
because Prefect tasks may run on other threads than the flow.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pbf_core.config import Settings
from pbf_core.redaction import without_credentials
from tasks.tracking.faults import bound_retries

#: Where ``mlflow ui`` serves a local tracking store (the summary prints the command).
LOCAL_UI_URL = "http://127.0.0.1:5000"


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


def tracking_uri(settings: Settings | None = None) -> str | None:
    """The tracking URI the environment names (``PBF_TRACKING_URI``, ``MLFLOW_TRACKING_URI``)."""
    settings = settings or Settings()
    return settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def resolve_store(settings: Settings | None = None) -> Store:
    """The store of these settings (the environment's by default), resolved once per process.

    A SQLite store (the default or one named by URI) keeps its artifacts in ``artifacts/`` next
    to the database file; a tracking server decides where artifacts go.
    """
    settings = settings or Settings()
    return _resolve(tracking_uri(settings), settings.state_dir.resolve(), settings.registry_name)


@functools.cache
def _resolve(uri: str | None, state_dir: Path, registry_name: str) -> Store:
    if not uri:
        root = state_dir / "mlflow"
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
    if uri.startswith(("http://", "https://")):
        return Store(uri, None, without_credentials(uri).rstrip("/"), registry_name)
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return Store(uri, artifacts, LOCAL_UI_URL, registry_name)


def ui_command(store: Store) -> str:
    """Shell command that serves the MLflow UI for ``store`` (empty for a tracking server)."""
    if not store.is_local:
        return ""
    return f"mlflow ui --backend-store-uri {store.uri} --port {LOCAL_UI_URL.rsplit(':', 1)[1]}"


def client(store: Store | None = None):
    """An ``MlflowClient`` for ``store``; also points MLflow's model logging at it."""
    import mlflow

    store = store or resolve_store()
    bound_retries()
    # mlflow.<flavor>.log_model resolves the store globally; it is the same for the process.
    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return _client(store.uri)


@functools.cache
def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri, uri)
