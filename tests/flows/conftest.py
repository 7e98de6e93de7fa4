"""A Prefect test server and a private state directory (data, MLflow store) for flow tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """Flows in this session run against a temporary Prefect server; results stay in tmp."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-storage")
    updates = {PREFECT_LOCAL_STORAGE_PATH: storage, PREFECT_SERVER_ANALYTICS_ENABLED: False}
    with temporary_settings(updates=updates), prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    """``PBF_STATE_DIR`` for a test module, with the default local tracking store inside it."""
    state = tmp_path_factory.mktemp("pbf-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PBF_STATE_DIR", str(state))
        mp.setenv("BENTOML_HOME", str(state / "bentoml"))
        mp.delenv("PBF_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield state
