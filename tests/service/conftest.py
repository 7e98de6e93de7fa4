"""One real ``bentoml serve`` per session, serving a tiny hand-made model packaged into a temp store.

The model (see :mod:`service_support`) goes through the real export (fp32 ONNX with the spec in
its metadata), static int8 quantization and ``python -m flows.cli package``, like a champion would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.processes import stop_tree
from service_support import REPO, SERVER_ENV, bentoml_env, export_tiny_pair, start_server


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


@pytest.fixture(scope="session")
def server(bentoml_home, tmp_path_factory):
    """Base URL of a real ``bentoml serve service:DefectService`` (one per session)."""
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    proc, url = start_server(bentoml_home, log, **SERVER_ENV)
    try:
        yield url
    finally:
        stop_tree(proc)
