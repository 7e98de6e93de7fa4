"""Access: the optional API key and the security headers on every answer.

With a key set (``PBF_SERVE_API_KEY``) every path but the probes (``/readyz``, ``/livez``,
``/healthz``) and the page's own files (``/``, ``/static/...``) answers 401 unless the request
carries the key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; the page asks for it
and sends it with its calls. ``/metrics`` is then closed too.
"""

from __future__ import annotations

import hmac
from typing import Any

from pbf_core.serving.uploads import UploadError

#: Paths open without the key: the probes, the page and the API docs (they hold no data).
OPEN_PATHS = frozenset({"/", "/readyz", "/livez", "/healthz", "/docs", "/docs.json"})
OPEN_PREFIXES = ("/static/", "/static_content/")

#: Sent with every answer. The page loads only its own script and style; the overlay is a data URL.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
_OURS = frozenset(k.encode() for k in SECURITY_HEADERS)
_PAIRS = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


class AccessGuard:
    """ASGI middleware: the API key check (when ``api_key`` is set) and the security headers."""

    def __init__(self, app: Any, api_key: str | None = None) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        if self._key is not None and not _is_open(scope["path"]) and not self._allowed(scope):
            reason = (
                "this service needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"
            )
            refusal = UploadError(401, None, reason, "auth", {"WWW-Authenticate": "Bearer"})
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Any) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return hmac.compare_digest(given, self._key)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _with_headers(send: Any) -> Any:
    """``send`` that adds :data:`SECURITY_HEADERS` to the response start (theirs are replaced)."""

    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
            message = {**message, "headers": kept + _PAIRS}
        await send(message)

    return sending
