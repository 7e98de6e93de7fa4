"""A Docker engine for the container tests: the one that answers already, or Debian's ``dockerd``
started here (as root, no bridge, no iptables: containers use the host's loopback) and stopped by
its PID afterwards. Skips the test when neither is possible, except under ``CI=true``, where
``.ci/run`` installs ``docker.io`` and a missing engine is a failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

DOCKERD = "/usr/sbin/dockerd"
START_S = 60


def _client() -> str | None:
    """Debian's client first: a newer one on PATH may want buildx, which is not installed here."""
    found = [p for p in ("/usr/bin/docker", shutil.which("docker")) if p and Path(p).exists()]
    return found[0] if found else None


def _answers(client: str, env: dict) -> bool:
    cmd = [client, "version", "--format", "{{.Server.Version}}"]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode == 0


def _unavailable(why: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"no Docker engine in CI: {why} (.ci/run installs docker.io)")
    pytest.skip(why)


@contextlib.contextmanager
def docker_engine() -> Iterator[dict[str, str]]:
    """The environment (``DOCKER``, ``DOCKER_HOST``) that reaches a running engine."""
    client = _client()
    if client is None:
        _unavailable("no docker client (apt-get install docker.io)")
    env = {**os.environ, "DOCKER": client}
    if _answers(client, env):
        yield env
        return
    if not Path(DOCKERD).exists() or os.geteuid() != 0:
        _unavailable("no Docker engine answers and dockerd cannot be started here (needs root)")
    with _started_dockerd(client) as env:
        yield env


@contextlib.contextmanager
def _started_dockerd(client: str) -> Iterator[dict[str, str]]:
    run_dir = Path(tempfile.mkdtemp(prefix="pbfd-"))  # short: a socket path has ~100 bytes
    sock = f"unix://{run_dir}/docker.sock"
    cmd = [DOCKERD, "--bridge=none", "--iptables=false", "--host", sock]
    cmd += ["--exec-root", str(run_dir / "exec"), "--pidfile", str(run_dir / "docker.pid")]
    log = run_dir / "dockerd.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    env = {**os.environ, "DOCKER": client, "DOCKER_HOST": sock}
    try:
        deadline = time.monotonic() + START_S
        while not _answers(client, env):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield env
    finally:
        proc.terminate()  # the daemon we started, by its PID; it stops its containerd too
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def running_container(
    docker: dict[str, str], image: str, args: list[str], probe: str, timeout_s: float = 120
) -> Iterator[None]:
    """``docker run`` of ``image args`` on the host network; waits until ``probe`` answers 200
    (failing with the container's log tail if it never does); removes the container after."""
    name = f"pbf-test-{uuid.uuid4().hex[:8]}"
    cmd = [docker["DOCKER"], "run", "-d", "--name", name, "--network", "host", image, *args]
    subprocess.run(cmd, env=docker, check=True, capture_output=True)
    try:
        _wait_answering(probe, docker, name, timeout_s)
        yield
    finally:
        subprocess.run([docker["DOCKER"], "rm", "-f", name], env=docker, capture_output=True)


def _wait_answering(url: str, docker: dict[str, str], name: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail with the container's log tail if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(1)
    logs = subprocess.run(
        [docker["DOCKER"], "logs", name], env=docker, capture_output=True, text=True
    )
    pytest.fail(
        f"container {name}: {url} not answering after {timeout_s:g} s:\n{(logs.stdout + logs.stderr)[-4000:]}"
    )
