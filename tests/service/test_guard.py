"""The request guard in front of a stand-in app, without a server: limits, form checks, replay."""

from __future__ import annotations

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from pbf_core.serving.guard import RequestGuard

LIMIT = 1000


async def _echo(request: Request) -> JSONResponse:
    """What the guarded app received: the body size and the form's fields."""
    body = await request.body()
    fields = []
    if request.headers.get("content-type", "").startswith("multipart/"):
        fields = sorted((await request.form()).keys())
    return JSONResponse({"size": len(body), "fields": fields})


def _app() -> RequestGuard:
    inner = Starlette(routes=[Route(p, _echo, methods=["POST"]) for p in ("/segment", "/other")])
    return RequestGuard(inner, max_body_bytes=LIMIT, file_routes=("/segment",))


@pytest.fixture
def client() -> TestClient:
    return TestClient(_app())


def test_a_file_upload_is_passed_on_with_its_body(client):
    r = client.post("/segment", files={"image": ("x.png", b"12345", "image/png")})
    assert r.status_code == 200 and r.json()["fields"] == ["image"]
    assert r.json()["size"] > 5  # the whole multipart body, replayed


def test_other_routes_are_not_guarded(client):
    r = client.post("/other", content=b"x" * (LIMIT + 1))
    assert r.status_code == 200 and r.json()["size"] == LIMIT + 1


def test_declared_oversize_body_is_refused(client):
    r = client.post("/segment", content=b"x" * (LIMIT + 1))
    assert r.status_code == 413
    assert r.json() == {
        "error": f"request of {LIMIT + 1:,} bytes exceeds 0 MiB",
        "kind": "size",
        "field": None,
    }


def test_undeclared_oversize_body_is_refused_while_reading():
    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 3
    sent: list[dict] = []

    async def receive() -> dict:
        return chunks.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/segment", "headers": []}
    anyio.run(_app(), scope, receive, send)
    assert sent[0]["status"] == 413 and b"request exceeds" in sent[1]["body"]
    assert len(chunks) == 1  # stopped reading past the limit


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        (
            {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=x"}},
            None,
            "malformed multipart body",
        ),
        (
            {"data": {"image": "http://127.0.0.1:1/x.png"}, "files": {"x": ("x", b"1")}},
            "image",
            "field 'image' must be a file upload",
        ),
    ],
)
def test_malformed_forms_are_refused(client, kwargs, field, words):
    r = client.post("/segment", **kwargs)
    assert r.status_code == 400
    assert r.json()["field"] == field and words in r.json()["error"]
