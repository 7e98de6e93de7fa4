"""The page's routes without a server: ``/``, ``/static`` and ``GET /model`` before and after loading."""

from __future__ import annotations

from service_support import REPO
from starlette.testclient import TestClient

from pbf_core.serving.model import ModelNotReadyError
from pbf_core.serving.page import page_app

STATIC = REPO / "static"


def test_page_and_static_files():
    client = TestClient(page_app(STATIC, dict))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/static/app.js").status_code == 200


def test_model_before_and_after_loading():
    described: dict = {}

    def describe() -> dict:
        if not described:
            raise ModelNotReadyError("int8 model not loaded: loading")
        return described

    client = TestClient(page_app(STATIC, describe))
    r = client.get("/model")
    assert r.status_code == 503
    assert r.json() == {"ready": False, "error": "int8 model not loaded: loading"}
    described.update(spec={"threshold": 0.5}, info={"variant": "int8"})
    r = client.get("/model")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "spec": {"threshold": 0.5}, "info": {"variant": "int8"}}
