"""The API key and the security headers: the middleware alone, then a real locked service.

The real service is told to load its model from a tracking server that is down, at a URI with a
password in it: the password must not show in any answer or in the log.
"""

from __future__ import annotations

import httpx
import pytest
from helpers.processes import stop_tree
from service_support import start_server, triplet_files
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from pbf_core.serving.access import SECURITY_HEADERS, AccessGuard

KEY = "k3y-for-tests"
PASSWORD = "s3cretpw"


def _ok(_request) -> PlainTextResponse:
    return PlainTextResponse("ok", headers={"x-frame-options": "SAMEORIGIN"})


def _client(key: str | None) -> TestClient:
    paths = ("/", "/readyz", "/livez", "/model", "/metrics", "/static/app.js", "/segment")
    app = Starlette(routes=[Route(p, _ok, methods=["GET", "POST"]) for p in paths])
    return TestClient(AccessGuard(app, api_key=key))


@pytest.mark.parametrize("path", ["/model", "/metrics", "/segment"])
def test_a_locked_service_refuses_calls_without_the_key(path):
    r = _client(KEY).get(path)
    assert r.status_code == 401 and r.json()["kind"] == "auth"
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}],
)
def test_the_key_opens_it_in_either_header(headers):
    assert _client(KEY).get("/model", headers=headers).status_code == 200


@pytest.mark.parametrize(
    "headers", [{"X-API-Key": KEY[:-1]}, {"Authorization": KEY}, {"X-API-Key": ""}]
)
def test_a_wrong_key_is_refused(headers):
    assert _client(KEY).get("/model", headers=headers).status_code == 401


@pytest.mark.parametrize("path", ["/", "/readyz", "/livez", "/static/app.js"])
def test_probes_and_the_page_stay_open(path):
    assert _client(KEY).get(path).status_code == 200


@pytest.mark.parametrize("key", [None, ""])
def test_without_a_key_everything_is_open(key):
    assert _client(key).get("/model").status_code == 200


def test_every_answer_carries_the_security_headers():
    for r in (_client(None).get("/"), _client(KEY).get("/model")):
        for name, value in SECURITY_HEADERS.items():
            assert r.headers[name] == value
    assert _client(None).get("/").headers.get_list("x-frame-options") == ["DENY"]


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """A real service with an API key whose tracking server (URI with a password) is down."""
    from helpers.processes import free_port

    work = tmp_path_factory.mktemp("locked")
    env = {
        "PBF_SERVE_API_KEY": KEY,
        "PBF_SERVE_SOURCE": "tracking",
        "PBF_TRACKING_URI": f"http://pbf:{PASSWORD}@127.0.0.1:{free_port()}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
    }
    log = work / "serve.log"
    proc, url = start_server(work / "bentoml", log, probe="/livez", **env)
    try:
        yield url, log
    finally:
        stop_tree(proc)


def _not_ready(url: str) -> httpx.Response:
    """``GET /model`` once the first load has failed (the error then names the server)."""
    import time

    for _ in range(60):
        r = httpx.get(f"{url}/model", headers={"X-API-Key": KEY}, timeout=10)
        if "127.0.0.1" in r.text:
            return r
        time.sleep(0.5)
    raise AssertionError(f"the load error never named the server: {r.text}")


@pytest.mark.integration
def test_real_service_locks_the_apis_but_not_the_probes(locked):
    url, _ = locked
    for path in ("/model", "/metrics"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
    r = httpx.post(f"{url}/segment", files=triplet_files(), timeout=30)
    assert r.status_code == 401 and r.json()["kind"] == "auth"
    assert httpx.get(f"{url}/livez").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 503  # open, and honest: not ready
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert metrics.status_code == 200


@pytest.mark.integration
def test_real_service_never_shows_the_tracking_password(locked):
    url, log = locked
    model = _not_ready(url)
    assert model.status_code == 503 and PASSWORD not in model.text
    assert "pbf:***@127.0.0.1" in model.json()["error"]
    r = httpx.post(f"{url}/segment", files=triplet_files(), headers={"X-API-Key": KEY}, timeout=30)
    assert r.status_code == 503 and PASSWORD not in r.text
    text = log.read_text()
    assert "not loaded" in text and PASSWORD not in text
