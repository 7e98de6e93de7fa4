"""The request guard in front of a stand-in app, without a server: limits, form checks, replay."""

from __future__ import annotations

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from pbf_core.serving.admission import Admission
from pbf_core.serving.guard import GuardLimits, RequestGuard

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
    return RequestGuard(inner, GuardLimits(LIMIT, body_timeout_s=2.0), file_routes=("/segment",))


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


MULTIPART = [(b"content-type", b"multipart/form-data; boundary=x")]


def _call(app, messages: list[dict], stall_s: float = 0.0) -> list[dict]:
    """Run ``app`` on a POST /segment whose body comes as ``messages``, then stalls ``stall_s``."""
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await anyio.sleep(stall_s)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/segment", "headers": MULTIPART}
    anyio.run(app, scope, receive, send)
    return sent


def test_undeclared_oversize_body_is_refused_while_reading():
    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 3
    sent = _call(_app(), chunks)
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


def test_a_stalled_body_gets_408_after_the_timeout():
    """A client that stops sending is answered 408 when its time is up, not held forever."""
    app = RequestGuard(_app().app, GuardLimits(LIMIT, body_timeout_s=0.3), ("/segment",))
    part = [{"type": "http.request", "body": b"--x\r\n", "more_body": True}]
    sent = _call(app, part, stall_s=30)
    assert sent[0]["status"] == 408
    assert b'"kind":"timeout"' in sent[1]["body"] and b"5 bytes came" in sent[1]["body"]


def test_a_client_that_goes_away_gets_no_answer():
    assert _call(_app(), [{"type": "http.disconnect"}]) == []


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"data": {"image": "http://127.0.0.1:1/x.png"}}, "application/x-www-form-urlencoded"),
        ({"json": {"image": "http://127.0.0.1:1/x.png"}}, "application/json"),
        ({"content": b"\x89PNG", "headers": {"content-type": "image/png"}}, "image/png"),
        ({"content": b"abc"}, "none"),
    ],
)
def test_anything_but_multipart_gets_415(client, kwargs, shown):
    """JSON and urlencoded bodies would reach BentoML's URL-fetching input path: refused."""
    r = client.post("/segment", **kwargs)
    assert r.status_code == 415
    assert r.json()["kind"] == "request" and repr(shown) in r.json()["error"]


@pytest.mark.parametrize(
    ("files", "status", "field", "words"),
    [
        ({"imag": ("x.png", b"1")}, 400, "imag", "unknown field 'imag'"),
        ({"image": ("x" * 197 + ".png", b"1")}, 400, "image", "over 200 bytes"),
        ({"image": ("é" * 101, b"1")}, 400, "image", "over 200 bytes"),
    ],
)
def test_bad_form_parts_get_400_naming_the_field(client, files, status, field, words):
    r = client.post("/segment", files=files)
    assert r.status_code == status
    assert r.json()["field"] == field and words in r.json()["error"]


def test_too_many_parts_get_400():
    app = RequestGuard(_app().app, GuardLimits(100_000), ("/segment",))
    r = TestClient(app).post("/segment", files=[("a", ("a.png", b"1"))] * 9)
    assert r.status_code == 400 and "Too many files" in r.json()["error"]


def test_a_200_byte_file_name_is_accepted(client):
    r = client.post("/segment", files={"image": ("x" * 196 + ".png", b"1")})
    assert r.status_code == 200 and r.json()["fields"] == ["image"]


def test_a_big_upload_is_spooled_to_disk_and_replayed_whole():
    """The body goes to a temporary file as it comes; the app still reads every byte."""
    big = 5 * 1024**2
    app = RequestGuard(_app().app, GuardLimits(8 * 1024**2), ("/segment",))
    r = TestClient(app).post("/segment", files={"a": ("a.png", b"y" * big)})
    assert r.status_code == 200 and r.json()["size"] > big


def test_the_queue_refuses_with_retry_after_when_full():
    """One slot, one waiter: the third concurrent request gets 503 and Retry-After."""
    gate = anyio.Event()

    async def slow(request: Request) -> JSONResponse:
        await gate.wait()
        return JSONResponse({"ok": True})

    inner = Starlette(routes=[Route("/segment", slow, methods=["POST"])])
    statuses: list[tuple[int, dict]] = []

    async def main() -> None:
        app = RequestGuard(inner, GuardLimits(LIMIT), ("/segment",), Admission(1, 1))

        async def one() -> None:
            sent = []
            messages = [{"type": "http.request", "body": FORM, "more_body": False}]

            async def receive() -> dict:
                return messages.pop(0) if messages else {"type": "http.disconnect"}

            async def send(message: dict) -> None:
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": "/segment", "headers": MULTIPART}
            await app(scope, receive, send)
            statuses.append((sent[0]["status"], dict(sent[0]["headers"])))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
            while not statuses:
                await anyio.sleep(0.01)
            gate.set()

    anyio.run(main)
    assert [s for s, _ in statuses] == [503, 200, 200]
    assert int(statuses[0][1][b"retry-after"]) >= 1


FORM = (
    b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n1\r\n--x--\r\n'
)
