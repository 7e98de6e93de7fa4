"""One real ``bentoml serve`` per session, serving a tiny hand-made model packaged into a temp store.

The model (see :mod:`service_support`) goes through the real export (fp32 ONNX with the spec in
its metadata), static int8 quantization and ``python -m flows.cli package``, like a champion would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.processes import free_port, stop_tree, wait_ready
from service_support import REPO, bentoml_env, export_tiny_pair

#: Small limits, so the size tests need small files: 1 MiB per file, 300k pixels per image, and
#: a stalled body is cut off after 3 s.
SERVER_ENV = {
    "PBF_SERVE_MAX_UPLOAD_MB": "1",
    "PBF_SERVE_MAX_PIXELS": "300000",
    "PBF_SERVE_BODY_TIMEOUT_S": "3",
}
STARTUP_S = 180


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory) -> Path:
    """A BentoML home holding the tiny model, packaged by ``pbf package`` (run as a module)."""
    work = tmp_path_factory.mktemp("service-model")
    files = export_tiny_pair(work)
    home = work / "bentoml"
    cmd = [sys.executable, "-m", "flows.cli", "package"]
    cmd += ["--int8", str(files["int8"]), "--fp32", str(files["fp32"])]
    done = subprocess.run(
        cmd, cwd=REPO, env=bentoml_env(home), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return home


def start_server(
    home: Path, log: Path, probe: str = "/readyz", **env: str
) -> tuple[subprocess.Popen, str]:
    """Start ``bentoml serve service:DefectService`` on a free port; wait until ``probe`` is 200."""
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "service:DefectService"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=bentoml_env(home, **env), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}{probe}", proc, log, STARTUP_S)
    except BaseException:
        stop_tree(proc)
        raise
    return proc, url


@pytest.fixture(scope="session")
def server(bentoml_home, tmp_path_factory):
    """Base URL of a real ``bentoml serve service:DefectService`` (one per session)."""
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    proc, url = start_server(bentoml_home, log, **SERVER_ENV)
    try:
        yield url
    finally:
        stop_tree(proc)
