"""Real servers for the end-to-end tests, one of each per session, all state in tmp.

``mlflow server`` (SQLite + local artifact directory) and ``prefect server`` (SQLite in a temp
PREFECT_HOME, scheduler off so the nightly deployment never fires during a test), each on a free
port of 127.0.0.1. Nothing leaves the machine: analytics are off.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.processes import ServerStartError, free_port, mlflow_server_command, wait_ready

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Poll ``url`` until it answers 200; fail the test with the server's log otherwise."""
    try:
        wait_ready(url, proc, log, timeout_s)
    except ServerStartError as exc:
        pytest.fail(str(exc))


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start a server in its own process group, output to ``log``."""
    fh = log.open("w")
    return subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started by :func:`start` and its children (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Processes:
    """Start/stop helpers for tests; whatever is still running at teardown is stopped."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
        proc = start(cmd, env, log)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        stop(proc)


@pytest.fixture(scope="session")
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    for proc in procs.running:
        stop(proc)


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def mlflow_server(e2e_root) -> Iterator[str]:
    """URL of a real MLflow tracking server with a SQLite store and proxied local artifacts."""
    root = e2e_root / "mlflow"
    root.mkdir()
    port = free_port()
    cmd = mlflow_server_command(BIN, root, port)
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    log = root / "server.log"
    proc = start(cmd, env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def prefect_env(e2e_root) -> dict[str, str]:
    """Environment every Prefect client, worker and flow run of the session shares."""
    home = e2e_root / "prefect-home"
    home.mkdir()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.fixture(scope="session")
def prefect_server(e2e_root, prefect_env) -> Iterator[str]:
    """API URL of a real ``prefect server start`` (scheduler off, no UI)."""
    port = free_port()
    cmd = [
        str(BIN / "prefect"), "server", "start",
        "--host", "127.0.0.1", "--port", str(port),
        "--no-ui", "--analytics-off", "--no-scheduler", "--no-late-runs",
    ]  # fmt: skip
    log = e2e_root / "prefect-server.log"
    proc = start(cmd, prefect_env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", proc, log)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop(proc)
