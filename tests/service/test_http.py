"""The real service over HTTP: segmentation, overlay, every bad upload, and it keeps answering."""

from __future__ import annotations

import base64
import importlib.util
import io
import socket
import time

import cv2
import httpx
import numpy as np
import pytest
from helpers.processes import stop_tree
from PIL import Image
from service_support import SERVER_ENV, layer, png_bytes, start_server, triplet_files

pytestmark = pytest.mark.integration


def post(server: str, route: str, files=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{server}{route}", files=files, timeout=60, **kwargs)


def rgb_of_views(spot=(30, 40, 20)) -> bytes:
    """One RGB 16-bit PNG whose channels are the a/b/c views (how prepared datasets store them)."""
    return png_bytes(np.stack([layer(spot=spot, seed=i) for i in range(3)], axis=2))


def test_ready_model_and_metrics(server):
    assert httpx.get(f"{server}/readyz").status_code == 200
    model = httpx.get(f"{server}/model").json()
    assert model["ready"] and model["info"]["variant"] == "int8"
    expected = "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"
    assert model["info"]["runtime"] == expected  # PBF_SERVE_RUNTIME=auto
    assert model["spec"]["threshold"] == 0.5 and model["spec"]["tile_size"] == 64
    metrics = httpx.get(f"{server}/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text


@pytest.mark.parametrize(
    "files",
    [
        pytest.param(triplet_files(), id="triplet"),
        pytest.param({"image": ("layer.png", rgb_of_views(), "image/png")}, id="rgb-views"),
    ],
)
def test_segment_finds_the_bright_square(server, files):
    r = post(server, "/segment", files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["is_defective"] is True
    assert body["threshold"] == 0.5  # from the model's metadata
    assert body["model"]["name"] == "pbf-defect-segmenter"
    assert body["model"]["variant"] == "int8" and body["model"]["version"]
    assert (body["width"], body["height"]) == (128, 96)
    (comp,) = body["components"]
    x0, y0, x1, y1 = comp["bbox"]
    # the square spans x 40..60, y 30..50; the 3x3 mean shaves a pixel off each side
    assert abs(x0 - 40) <= 2 and abs(y0 - 30) <= 2 and abs(x1 - 60) <= 2 and abs(y1 - 50) <= 2
    assert comp["max_prob"] > 0.9 and body["max_confidence"] > 0.9
    assert 2.0 < body["defect_area_pct"] < 4.5
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    assert mask.shape == (96, 128) and set(np.unique(mask)) <= {0, 255}
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["overlay_png"]))))
    assert overlay.shape == (96, 128, 3)
    assert (overlay[40, 50] == overlay[40, 50].max()).any() and overlay[40, 50, 0] > 200  # red
    assert tuple(overlay[y0 - 1, x0 + 5]) == (255, 255, 0)  # yellow box edge
    assert "Defect found: 1 region" in body["summary"]


def test_flat_layer_is_not_defective(server):
    flat = {
        v: (f"{v}.png", png_bytes(np.full((64, 64), 900, np.uint16)), "image/png") for v in "abc"
    }
    body = post(server, "/segment", flat).json()
    assert body["is_defective"] is False and body["components"] == []
    assert body["summary"].startswith("No defect found")


def test_overlay_returns_png_with_verdict(server):
    r = post(server, "/overlay", triplet_files())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-pbf-defective"] == "true" and r.headers["x-pbf-components"] == "1"
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (96, 128, 3)


def _float_tiff() -> bytes:
    ok, buf = cv2.imencode(".tiff", np.zeros((32, 32), np.float32))
    assert ok
    return buf.tobytes()


GOOD = rgb_of_views()
BAD_UPLOADS = {
    # name: (files or request kwargs, status, field, words in the error)
    "not-an-image": (
        {"image": ("x.png", b"hello, world", "image/png")},
        422,
        "image",
        "not a recognised image",
    ),
    "truncated": (
        {"image": ("x.png", GOOD[: len(GOOD) // 3], "image/png")},
        422,
        "image",
        "truncated",
    ),
    "empty-file": ({"image": ("x.png", b"", "image/png")}, 422, "image", "empty file"),
    "over-size-limit": (
        {"image": ("x.png", np.random.default_rng(0).bytes(1_200_000), "image/png")},
        413,
        "image",
        "exceeds 1 MiB",
    ),
    "too-many-pixels": (
        {"image": ("x.png", png_bytes(np.zeros((600, 600), np.uint8)), "image/png")},
        422,
        "image",
        "too many pixels",
    ),
    "wrong-bit-depth": (
        {"image": ("x.tif", _float_tiff(), "image/tiff")},
        422,
        "image",
        "bit depth",
    ),
    "no-file": ({}, 400, None, "no file uploaded"),
    "incomplete-triplet": (
        {k: v for k, v in triplet_files().items() if k != "c"},
        400,
        "c",
        "missing 'c'",
    ),
    "image-and-triplet": (
        {"image": ("x.png", GOOD, "image/png"), **triplet_files()},
        400,
        "image",
        "not both",
    ),
    "two-files-in-a-field": (
        [("a", ("a.png", GOOD, "image/png")), ("a", ("a2.png", GOOD, "image/png"))],
        400,
        "a",
        "2 files",
    ),
    "mismatched-triplet": (
        {**triplet_files(), "c": ("c.png", png_bytes(layer(size=(64, 64))), "image/png")},
        422,
        None,
        "sizes differ",
    ),
    "grey-image-for-triplet-model": (
        {"image": ("x.png", png_bytes(layer()), "image/png")},
        422,
        "image",
        "3 views",
    ),
}


@pytest.mark.parametrize("route", ["/segment", "/overlay"])
@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_upload_gets_4xx_json(server, name, route):
    files, status, field, words = BAD_UPLOADS[name]
    r = post(server, route, files or None, data=None if files else {})
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["error"] and body["field"] == field


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        pytest.param(
            {"data": {"image": "http://127.0.0.1:1/x.png"}, "files": {"a": ("x", b"1")}},
            400,
            id="url-as-text",
        ),
        pytest.param(
            {
                "content": b"garbage",
                "headers": {"content-type": "multipart/form-data; boundary=xx"},
            },
            400,
            id="malformed-multipart",
        ),
        pytest.param({"files": {"x": ("x.png", b"1")}}, 400, id="unknown-field"),
        pytest.param({"files": {"image": ("x" * 300, b"1")}}, 400, id="long-filename"),
        pytest.param({"json": {"image": "abc"}}, 415, id="json-string"),
        pytest.param(
            {"content": b"{oops", "headers": {"content-type": "application/json"}},
            415,
            id="bad-json",
        ),
        pytest.param({"data": {"image": "http://127.0.0.1:1/x.png"}}, 415, id="urlencoded-url"),
        pytest.param({"data": {f"f{i}": "1" for i in range(1500)}}, 415, id="urlencoded-1500"),
    ],
)
def test_malformed_request_gets_4xx_json(server, kwargs, status):
    """No input path of ours reads a value as a URL to fetch: such bodies are refused."""
    r = httpx.post(f"{server}/segment", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_declared_oversize_body_refused_before_reading(server):
    """A 1 GB Content-Length is answered at once, without waiting for (or reading) the body."""
    host, port = server.removeprefix("http://").split(":")
    head = (
        "POST /segment HTTP/1.1\r\nHost: test\r\nContent-Length: 999999999\r\n"
        "Content-Type: multipart/form-data; boundary=xx\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + b"x" * 100)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_stalled_upload_is_cut_off_with_408(server):
    """A client that sends part of its body and stops gets 408 when the body timeout (3 s here)
    ends; the service does not wait for it forever."""
    host, port = server.removeprefix("http://").split(":")
    head = (
        "POST /segment HTTP/1.1\r\nHost: test\r\nContent-Length: 500000\r\n"
        "Content-Type: multipart/form-data; boundary=xx\r\n\r\n--xx\r\n"
    )
    started = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + b"x" * 1000)
        answer = sock.recv(4096)
        took = time.perf_counter() - started
        while chunk := sock.recv(4096):  # the body may come in a later segment; then it closes
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b'"kind":"timeout"' in answer, answer[:300]
    assert 2.5 < took < 20


def test_a_thin_strip_is_refused_from_its_header(server):
    """A 1x300,000 triplet (35 KB) once cost gigabytes to pad into tiles: refused at once."""
    strip = png_bytes(np.zeros((1, 300_000), np.uint16))
    r = post(server, "/segment", {v: (f"{v}.png", strip, "image/png") for v in "abc"})
    assert r.status_code == 422 and "aspect ratio of 300,000:1" in r.json()["error"]


def test_still_answers_after_bad_input(server):
    """Runs after the bad-input tests (file order): the service is up and right."""
    assert httpx.get(f"{server}/readyz").status_code == 200
    body = post(server, "/segment", triplet_files()).json()
    assert body["is_defective"] is True and len(body["components"]) == 1


@pytest.fixture(scope="module")
def server_without_model(tmp_path_factory):
    """A service told to load from an empty tracking store: alive, never ready.

    (From the BentoML store, ``bentoml serve`` itself refuses to start without the model.)
    """

    work = tmp_path_factory.mktemp("no-model")
    env = {"PBF_SERVE_SOURCE": "tracking", "PBF_TRACKING_URI": f"sqlite:///{work / 'empty.db'}"}
    proc, url = start_server(work / "bentoml", work / "serve.log", probe="/livez", **env)
    try:
        yield url
    finally:
        stop_tree(proc)


def test_readiness_reflects_a_missing_model(server_without_model):
    url = server_without_model
    assert httpx.get(f"{url}/livez").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 503
    model = httpx.get(f"{url}/model")
    assert model.status_code == 503 and "not loaded" in model.json()["error"]
    r = post(url, "/segment", triplet_files())
    assert r.status_code == 503 and r.json()["kind"] == "model", r.text
    assert httpx.get(f"{url}/").status_code == 200  # the page still loads and says so


@pytest.fixture(scope="module")
def batched_server(bentoml_home, tmp_path_factory):
    """The same model served with ``PBF_SERVE_BATCHING=true`` (adaptive batching in its own
    inference processes) on ONNX Runtime."""

    log = tmp_path_factory.mktemp("serve-batched") / "serve.log"
    env = {"PBF_SERVE_BATCHING": "true", "PBF_SERVE_RUNTIME": "onnxruntime", **SERVER_ENV}
    proc, url = start_server(bentoml_home, log, **env)
    try:
        yield url
    finally:
        stop_tree(proc)


def _mask(body: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))


def test_batching_layout_and_runtime_give_the_same_answers(server, batched_server):
    """Concurrent requests (their tiles batched together, ONNX Runtime) get what the default
    layout (in process, OpenVINO where installed) says."""
    from concurrent.futures import ThreadPoolExecutor

    uploads = [triplet_files(spot=(30 + 5 * i, 40, 20)) for i in range(6)]
    expected = [post(server, "/segment", f).json() for f in uploads]
    with ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(lambda f: post(batched_server, "/segment", f), uploads))
    for want, got in zip(expected, answers, strict=True):
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["components"][0]["bbox"] == want["components"][0]["bbox"]
        assert body["num_components"] == want["num_components"] == 1
        assert body["max_confidence"] == pytest.approx(want["max_confidence"], abs=1e-3)
        assert np.mean(_mask(body) == _mask(want)) > 0.999
    model = httpx.get(f"{batched_server}/model").json()
    assert model["ready"] and model["info"]["variant"] == "int8"
    assert model["info"]["runtime"] == "onnxruntime"
