"""The request guard: ASGI middleware that refuses oversized and malformed uploads as 4xx JSON."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from pbf_core.serving.uploads import UPLOAD_FIELDS, UploadError


class RequestGuard:
    """ASGI middleware in front of the upload routes: size limit and form check.

    Refuses, as 4xx JSON, a body over ``max_body_bytes`` (413, before reading it when the length
    is declared), a malformed multipart body (400), and text where a file is expected (400):
    BentoML would fetch such a value as a URL, and an upload service has no business fetching
    URLs. Everything else is passed on with the buffered body.
    """

    def __init__(self, app: Any, max_body_bytes: int, file_routes: tuple[str, ...]) -> None:
        self.app, self.max_body, self.routes = app, max_body_bytes, file_routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._body(scope, receive)
            if body is None:
                return  # the client went away
            await self._check_form(scope, body)
        except UploadError as exc:
            await exc.response()(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _body(self, scope: Any, receive: Any) -> bytes | None:
        limit = f"{self.max_body / 1024**2:.0f} MiB"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            raise UploadError(
                413, None, f"request of {int(length):,} bytes exceeds {limit}", "size"
            )
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                raise UploadError(413, None, f"request exceeds {limit}", "size")
        return b"".join(chunks)

    async def _check_form(self, scope: Any, body: bytes) -> None:
        request = Request(scope, _replay(body, None))
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return
        try:
            form = await request.form()
        except (MultiPartException, HTTPException, ValueError) as exc:
            # Starlette raises HTTPException instead of MultiPartException inside an app.
            reason = getattr(exc, "detail", None) or str(exc)
            raise UploadError(400, None, f"malformed multipart body: {reason}", "request") from None
        try:
            for field in UPLOAD_FIELDS:
                if any(not isinstance(v, UploadFile) for v in form.getlist(field)):
                    raise UploadError(
                        400, field, f"field {field!r} must be a file upload", "request"
                    )
        finally:
            await form.close()


def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[dict]]:
    """An ASGI ``receive`` that yields ``body`` once, then defers to ``receive``."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent and receive is not None:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
