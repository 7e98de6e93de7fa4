"""The containerized bento, built and run for real: ``scripts/containerize.py`` (what ``make
container`` runs) builds the bento and its image on a Docker engine here (a local Debian base
image: no Docker Hub), the image runs on loopback and answers as the in-process service does.

Slow (~3 min on a fresh machine: the base image, the pinned packages); ``.ci/run`` installs
``docker.io`` and ``mmdebstrap`` so it runs in CI.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import uuid

import httpx
import numpy as np
import pytest
from helpers.docker_engine import running_container
from helpers.processes import free_port
from PIL import Image
from service_support import REPO, bentoml_env, layer, png_bytes, triplet_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUILD_S = 1200
READY_S = 120


@pytest.fixture(scope="module")
def image(docker, bentoml_home):
    """The image of a bento of the tiny model, built by the script; removed afterwards."""
    tag = f"pbf-test-container:{uuid.uuid4().hex[:12]}"
    env = {
        **bentoml_env(bentoml_home),
        **{k: docker[k] for k in ("DOCKER", "DOCKER_HOST") if k in docker},
    }
    cmd = [sys.executable, str(REPO / "scripts" / "containerize.py"), "--tag", tag]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=BUILD_S)
    assert done.returncode == 0, done.stderr[-6000:]
    assert done.stdout.split() == [tag]
    yield tag
    subprocess.run([docker["DOCKER"], "rmi", "-f", tag], env=docker, capture_output=True)


@pytest.fixture(scope="module")
def container(docker, image):
    """Base URL of the image serving on 127.0.0.1 (host network: nothing leaves loopback)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    with running_container(docker, image, args, f"{url}/readyz", READY_S):
        yield url


def _mask(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))


def _uploads() -> list[dict]:
    rgb = png_bytes(np.stack([layer(spot=(50, 70, 16), seed=i) for i in range(3)], axis=2))
    flat = {
        v: (f"{v}.png", png_bytes(layer(spot=None, seed=i)), "image/png")
        for i, v in enumerate("abc")
    }
    return [triplet_files(), {"image": ("rgb.png", rgb, "image/png")}, flat]


def test_container_answers_as_the_in_process_service(container, server):
    for files in _uploads():
        want = httpx.post(f"{server}/segment", files=files, timeout=60).json()
        got = httpx.post(f"{container}/segment", files=files, timeout=60)
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["num_components"] == want["num_components"]
        assert [c["bbox"] for c in body["components"]] == [c["bbox"] for c in want["components"]]
        assert body["threshold"] == want["threshold"]
        assert body["max_confidence"] == pytest.approx(want["max_confidence"], abs=1e-3)
        assert np.array_equal(_mask(body), _mask(want))
    model = httpx.get(f"{container}/model", timeout=10).json()
    assert model["ready"] and model["info"]["variant"] == "int8"
    assert model["info"]["runtime"] == "openvino"


def test_container_refuses_bad_input_and_keeps_answering(container):
    bad = {v: (f"{v}.png", b"not an image", "image/png") for v in "abc"}
    r = httpx.post(f"{container}/segment", files=bad, timeout=60)
    assert r.status_code == 422 and "not a recognised image" in r.text
    assert httpx.post(f"{container}/segment", content=b"{}", timeout=30).status_code == 415
    assert httpx.get(f"{container}/readyz", timeout=10).status_code == 200
    page = httpx.get(f"{container}/", timeout=10)
    assert (
        page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    )


def test_image_runs_as_a_user_without_torch(docker, image):
    code = (
        "import os, importlib.util as u, service; "
        "print(os.getuid(), [m for m in ('torch', 'prefect') if u.find_spec(m)])"
    )
    cmd = [docker["DOCKER"], "run", "--rm", "--network", "none", "--entrypoint", "python"]
    cmd += ["-w", "/home/bentoml/bento/src", image, "-c", code]
    done = subprocess.run(cmd, env=docker, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    uid, modules = done.stdout.split(maxsplit=1)
    assert int(uid) != 0 and modules.strip() == "[]"
