"""The compose stack's MLflow image, built by ``scripts/containerize.py mlflow`` as a user would
(a local Debian base image where Docker Hub cannot be reached) and run on loopback: a tracking
server that a real client logs a run to, with the PostgreSQL driver and S3 client the stack needs.

The worker image is not built here: its CPU-only torch comes from download.pytorch.org, which
these machines cannot reach (PyPI's torch is the multi-GB CUDA build); ``test_docker_static``
checks its Dockerfile. PostgreSQL, MinIO and Prefect's images come from Docker Hub only.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers.docker_engine import running_container
from helpers.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BUILD_S = 1200
READY_S = 120


@pytest.fixture(scope="module")
def mlflow_image(docker):
    tag = uuid.uuid4().hex[:12]
    cmd = [sys.executable, str(REPO / "scripts" / "containerize.py"), "mlflow"]
    done = subprocess.run(
        [*cmd, "--compose-tag", tag], env=docker, capture_output=True, text=True, timeout=BUILD_S
    )
    assert done.returncode == 0, done.stderr[-6000:]
    assert done.stdout.split() == [f"pbf-mlflow:{tag}"]
    yield f"pbf-mlflow:{tag}"
    subprocess.run(
        [docker["DOCKER"], "rmi", "-f", f"pbf-mlflow:{tag}"], env=docker, capture_output=True
    )


@pytest.fixture(scope="module")
def mlflow_container(docker, mlflow_image):
    """``mlflow server`` from the image on 127.0.0.1 with a SQLite store inside the container."""
    port = free_port()
    args = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    args += ["--backend-store-uri", "sqlite:////tmp/mlflow.db", "--serve-artifacts"]
    args += ["--artifacts-destination", "/tmp/artifacts"]
    url = f"http://127.0.0.1:{port}"
    with running_container(docker, mlflow_image, args, f"{url}/health", READY_S):
        yield url


def test_mlflow_image_serves_tracking_and_artifacts(mlflow_container, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_container)
    experiment = client.create_experiment(f"container-{uuid.uuid4().hex[:6]}")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "dice", 0.75)
    note = tmp_path / "note.txt"
    note.write_text("from the host")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)
    got = client.get_run(run.info.run_id)
    assert got.data.metrics["dice"] == 0.75 and got.info.status == "FINISHED"
    back = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "back"))
    assert Path(back).read_text() == "from the host"


def test_mlflow_image_has_the_stack_drivers_and_no_root(docker, mlflow_image):
    code = "import os, psycopg2, boto3, mlflow; print(os.getuid(), mlflow.__version__)"
    cmd = [docker["DOCKER"], "run", "--rm", "--network", "none", mlflow_image, "python", "-c", code]
    done = subprocess.run(cmd, env=docker, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    uid, version = done.stdout.split()
    dockerfile = (REPO / "docker" / "mlflow.Dockerfile").read_text()
    assert int(uid) != 0 and f"MLFLOW_VERSION={version}" in dockerfile
