"""A tracking server that dies mid-run: the run ends fast with one line, and is marked FAILED.

``pbf run --config configs/tiny.yaml`` tracks to a real ``mlflow server``; once the MLflow run is
``RUNNING`` the server is killed. The command must end within 90 s with exit code 2 and a last
line naming the server and the step. With the server back (same store, same port), the next run's
first call marks the dead run ``FAILED``, so no run stays ``RUNNING``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.processes import free_port, mlflow_server_command, stop_tree, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = REPO / "configs" / "tiny.yaml"
DEADLINE_S = 90


def mlflow_server(root: Path, port: int) -> subprocess.Popen:
    cmd = mlflow_server_command(BIN, root, port)
    log = root / f"server-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed whole, like a dying host
        )
    wait_ready(f"http://127.0.0.1:{port}/health", proc, log, 120)
    return proc


def running_runs(uri: str) -> list[str]:
    """Ids of the RUNNING runs on the server (empty when it does not answer)."""
    from mlflow import MlflowClient

    try:
        mc = MlflowClient(uri)
        exps = [e.experiment_id for e in mc.search_experiments()]
        runs = mc.search_runs(exps, "attributes.status = 'RUNNING'") if exps else []
    except Exception:
        return []
    return [r.info.run_id for r in runs]


def test_a_dead_tracking_server_ends_the_run_fast_and_the_run_is_marked_failed(
    tmp_path, prefect_env, prefect_server, monkeypatch
):
    from mlflow import MlflowClient

    root = tmp_path / "mlflow"
    root.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = mlflow_server(root, port)
    env = {
        **prefect_env,
        "PREFECT_API_URL": prefect_server,
        "PBF_TRACKING_URI": uri,
        "PBF_STATE_DIR": str(tmp_path / "state"),
    }
    cmd = [str(BIN / "python"), "-m", "flows.cli", "run", "--config", str(TINY)]
    run = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 600
        while not (ids := running_runs(uri)):
            assert run.poll() is None, f"the run ended before tracking started: {run.stderr.read()}"
            assert time.monotonic() < deadline, "no MLflow run started in 600 s"
            time.sleep(0.5)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        killed = time.monotonic()
        _, err = run.communicate(timeout=300)
        took = time.monotonic() - killed
    finally:
        if run.poll() is None:
            run.kill()
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert run.returncode == 2, err[-3000:]
    assert took <= DEADLINE_S, f"{took:.0f} s after the server died"
    assert last.startswith(f"error: tracking server {uri} did not answer while "), last

    server = mlflow_server(root, port)  # back, on the same store
    try:
        assert running_runs(uri) == ids  # nobody could tell it yet
        monkeypatch.setenv("PBF_STATE_DIR", env["PBF_STATE_DIR"])
        from tasks.tracking.faults import settle_failed

        assert settle_failed(MlflowClient(uri)) == ids  # what the next run does first
        assert running_runs(uri) == []
        assert MlflowClient(uri).get_run(ids[0]).info.status == "FAILED"
    finally:
        stop_tree(server)
