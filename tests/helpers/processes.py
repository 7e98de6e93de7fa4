"""Server processes for tests and benchmarks: a free local port, waiting until one answers, and
stopping it with its workers.

Shared by the tests that start real servers (``bentoml serve``, ``mlflow server``, ``prefect
server``) and by ``benchmarks/serve.py``. Besides the generic pieces: the ``mlflow server``
command line and a Dask cluster.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


class ServerStartError(RuntimeError):
    """A server exited or did not answer in time; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server_command(bin_dir: Path, root: Path, port: int) -> list[str]:
    """``mlflow server`` on 127.0.0.1:``port`` with a SQLite store and proxied artifacts in ``root``."""
    return [
        str(bin_dir / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def wait_ready(
    url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120, in_a_row: int = 1
) -> None:
    """Poll ``url`` until it answers 200 ``in_a_row`` times running, each on a new connection.

    A server whose entry processes each answer a readiness probe for themselves alone (BentoML
    with several workers: the kernel spreads connections over them) is ready once many answers
    in a row say so: with two processes, 12 in a row all from one has a chance of 1 in 2,048.

    Raises:
        ServerStartError: ``proc`` exited first, or ``timeout_s`` passed; with ``log``'s tail.
    """
    deadline = time.monotonic() + timeout_s
    answered = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(
                f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                answered = answered + 1 if resp.status == 200 else 0
        except OSError:  # refused, reset, timeout, or an HTTP error status
            answered = 0
        if answered >= in_a_row:
            return
        if not answered:
            time.sleep(0.5)
    raise ServerStartError(f"{url} not up after {timeout_s:g} s:\n{log.read_text()[-4000:]}")


def stop_tree(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Terminate ``proc`` and every process below it (servers run workers in their own groups)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # workers the server did not take down with it: ask, then force
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def dask_cluster(bin_dir: Path, work: Path, workers: int = 2, timeout_s: float = 90):
    """``dask scheduler`` and ``workers`` single-threaded ``dask worker`` processes on
    127.0.0.1, started as a user would; yields the scheduler's ``tcp://`` address."""
    import json

    file = work / "scheduler.json"
    file.unlink(missing_ok=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--scheduler-file", str(file), "--dashboard-address", "127.0.0.1:0"], **quiet)]  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while not file.is_file():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise ServerStartError("dask scheduler wrote no scheduler file")
            time.sleep(0.2)
        procs += [subprocess.Popen([bin_dir / "dask", "worker", "--scheduler-file", str(file),
                                    "--nthreads", "1", "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"],
                                   **quiet) for _ in range(workers)]  # fmt: skip
        address = json.loads(file.read_text())["address"]
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=timeout_s)
        yield address
    finally:
        for p in reversed(procs):
            stop_tree(p)
