"""The request guard: ASGI middleware in front of the upload routes.

Everything a client can get wrong is refused as 4xx JSON (``error``, ``kind``, ``field``) before
the service decodes anything, and an upload never sits in memory: the body is spooled to a
temporary file as it arrives (a stalled client holds a file, not RAM) and replayed from there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

import anyio
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from pbf_core.serving.admission import Admission
from pbf_core.serving.uploads import UPLOAD_FIELDS, UploadError

#: Bytes of a body kept in memory before it is spooled to disk, and the replay chunk size.
SPOOL_BYTES = 64 * 1024
#: Longest file name accepted (bytes of UTF-8). BentoML keeps the name as the suffix of a
#: temporary file, whose whole name a file system limits to 255 bytes.
MAX_FILENAME_BYTES = 200
#: Most parts of a multipart body: the files of a triplet and a few spare.
MAX_PARTS = 8


@dataclass(frozen=True)
class GuardLimits:
    """What the guard allows: body size (bytes) and the seconds a client has to send it."""

    max_body_bytes: int
    body_timeout_s: float = 60.0


class RequestGuard:
    """Refuses bad requests to ``file_routes`` as 4xx JSON and admits the rest one slot each.

    - 413: a body over the limit (before reading it when its length is declared);
    - 408: a body not received within ``body_timeout_s``;
    - 415: anything but ``multipart/form-data`` (BentoML would read JSON or urlencoded values
      as URLs to fetch: an upload service has no business fetching URLs);
    - 400: a malformed multipart body, a field other than the upload fields, text where a file
      is expected, a file name over 200 bytes, too many parts;
    - 503 with ``Retry-After``: more requests waiting than ``admission`` queues.
    """

    def __init__(
        self,
        app: Any,
        limits: GuardLimits,
        file_routes: tuple[str, ...],
        admission: Admission | None = None,
    ) -> None:
        self.app, self.limits, self.routes, self.admission = app, limits, file_routes, admission

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as body:
            try:
                headers = dict(scope["headers"])
                _check_length(headers, self.limits.max_body_bytes)
                _check_content_type(headers)
                if not await self._spool(receive, body):
                    return  # the client went away
                await _check_form(scope, body)
                if self.admission is None:
                    await self.app(scope, _replay(body, receive), send)
                    return
                async with self.admission.slot():
                    await self.app(scope, _replay(body, receive), send)
            except UploadError as exc:
                await exc.response()(scope, receive, send)

    async def _spool(self, receive: Any, body: IO[bytes]) -> bool:
        """Write the request body into ``body``; False when the client disconnected."""
        limit, seconds = self.limits.max_body_bytes, self.limits.body_timeout_s
        size, more = 0, True
        with anyio.move_on_after(seconds) as timer:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return False
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise UploadError(413, None, f"request exceeds {_mib(limit)}", "size")
                body.write(chunk)
                more = message.get("more_body", False)
        if timer.cancelled_caught:
            reason = f"request body not received within {seconds:g} s ({size:,} bytes came)"
            raise UploadError(408, None, reason, "timeout", headers={"Connection": "close"})
        body.seek(0)
        return True


def _mib(limit: int) -> str:
    return f"{limit / 1024**2:.0f} MiB"


def _check_length(headers: dict[bytes, bytes], limit: int) -> None:
    """413 when the declared body length is over ``limit`` (before reading any of it)."""
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > limit:
        reason = f"request of {int(length):,} bytes exceeds {_mib(limit)}"
        raise UploadError(413, None, reason, "size")


def _check_content_type(headers: dict[bytes, bytes]) -> None:
    """415 unless the body is ``multipart/form-data``."""
    kind = headers.get(b"content-type", b"").decode("latin-1")
    if not kind and headers.get(b"content-length", b"0") == b"0":
        reason = "no file uploaded: send 'image', or 'a', 'b' and 'c', as multipart/form-data"
        raise UploadError(400, None, reason, "request")
    if not kind.lower().startswith("multipart/form-data"):
        shown = kind.split(";")[0].strip() or "none"
        reason = f"content type {shown!r}: send the files as multipart/form-data"
        raise UploadError(415, None, reason, "request")


async def _check_form(scope: Any, body: IO[bytes]) -> None:
    """Parse the spooled form once (its files spool to disk too) and check its fields."""
    request = Request(scope, _replay(body, None))
    try:
        form = await request.form(max_files=MAX_PARTS, max_fields=MAX_PARTS)
    except (MultiPartException, HTTPException, ValueError, UnicodeDecodeError) as exc:
        # Starlette raises HTTPException instead of MultiPartException inside an app.
        reason = getattr(exc, "detail", None) or str(exc)
        raise UploadError(400, None, f"malformed multipart body: {reason}", "request") from None
    try:
        for field, value in form.multi_items():
            _check_part(field, value)
    finally:
        await form.close()
        body.seek(0)


def _check_part(field: str, value: Any) -> None:
    """400 unless ``field`` is an upload field holding a file with a sane name."""
    if field not in UPLOAD_FIELDS:
        allowed = ", ".join(repr(f) for f in UPLOAD_FIELDS)
        reason = f"unknown field {field[:64]!r}: send only {allowed}"
        raise UploadError(400, field[:64], reason, "request")
    if not isinstance(value, UploadFile):
        raise UploadError(400, field, f"field {field!r} must be a file upload", "request")
    name = value.filename or ""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        reason = f"file name in field {field!r} is over {MAX_FILENAME_BYTES} bytes"
        raise UploadError(400, field, reason, "request")


def _replay(body: IO[bytes], receive: Any) -> Callable[[], Awaitable[dict]]:
    """An ASGI ``receive`` that yields ``body`` in chunks, then defers to ``receive``."""
    done = False

    async def replay() -> dict:
        nonlocal done
        if done and receive is not None:
            return await receive()
        chunk = body.read(SPOOL_BYTES)
        more = len(chunk) == SPOOL_BYTES
        done = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    return replay
