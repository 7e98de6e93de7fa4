"""The web page's app: ``/`` (the page), ``/static/*`` and ``GET /model``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pbf_core.serving.model import ModelNotReadyError


def page_app(static: Path, describe: Callable[[], dict]) -> Starlette:
    """The Starlette app of the page.

    Args:
        static: folder holding ``index.html`` and the files served under ``/static``.
        describe: ``{"spec", "info"}`` of the served model (what the page shows about it),
            called on a worker thread; raises :class:`ModelNotReadyError` while it loads.

    ``GET /model`` answers ``{"ready": True, "spec", "info"}``, or 503 with
    ``{"ready": False, "error"}``.
    """

    async def index(_: Request) -> Response:
        return FileResponse(static / "index.html", media_type="text/html")

    async def model(_: Request) -> Response:
        try:
            described = await anyio.to_thread.run_sync(describe)
        except ModelNotReadyError as exc:
            return JSONResponse({"ready": False, "error": str(exc)}, status_code=503)
        return JSONResponse({"ready": True, **described})

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/model", model, methods=["GET"]),
            Mount("/static", StaticFiles(directory=static), name="static"),
        ]
    )
