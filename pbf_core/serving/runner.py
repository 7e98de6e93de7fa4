"""What runs the served model: in this process (:class:`ModelRunner`, loaded in the background)
or in the batching inference service (:class:`RemoteRunner`, through its client).

Both answer ``describe()`` (``{"ready", "spec", "info"}`` or ``{"ready": False, "error"}``) and
``infer(tiles)``; where the model comes from is a ``source`` callable the caller passes in.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from pbf_core.deploy.runtimes import open_predictor
from pbf_core.redaction import redact
from pbf_core.serving.model import ModelNotReadyError, ServedModel
from pbf_core.serving.settings import ServeSettings

logger = logging.getLogger("pbf.service")

T = TypeVar("T")
#: Where the served model comes from: a scratch folder (for downloads) → the model.
Source = Callable[[Path], ServedModel]
#: Tries of one inference call when the connection to the inference service drops.
INFER_ATTEMPTS = 3


class Runner(Protocol):
    def describe(self) -> dict: ...

    def infer(self, tiles: np.ndarray) -> np.ndarray: ...


class BackgroundLoader(Generic[T]):
    """Runs ``load`` on a thread, retrying with backoff, so the server answers while it loads.

    Readiness is :attr:`ready`; a tracking server that comes up late is picked up on a retry.
    """

    def __init__(self, load: Callable[[], T], what: str, max_wait_s: float = 60.0) -> None:
        self._load, self._what, self._max_wait = load, what, max_wait_s
        self._value: T | None = None
        self._error = "loading"
        self._done = threading.Event()
        threading.Thread(target=self._run, name=f"load-{what}", daemon=True).start()

    def _run(self) -> None:
        wait = 1.0
        while True:
            try:
                self._value = self._load()
            except Exception as exc:  # any failure is retried; the reason is kept for answers
                self._error = redact(f"{type(exc).__name__}: {exc}")
                logger.warning(
                    "%s not loaded (%s); retrying in %.0f s", self._what, self._error, wait
                )
                time.sleep(wait)
                wait = min(wait * 2, self._max_wait)
                continue
            self._done.set()
            logger.info("%s loaded", self._what)
            return

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    def get(self) -> T:
        """The loaded value. Raises ModelNotReadyError with the last error while loading."""
        if not self._done.is_set():
            raise ModelNotReadyError(f"{self._what} not loaded: {self._error}")
        return self._value  # type: ignore[return-value]


class ModelRunner:
    """The served ONNX model inside one process, loaded in the background from ``source``.

    Request threads call :meth:`infer` concurrently: both runtimes are thread-safe and release
    the GIL, and serialising them behind a lock left cores idle.
    """

    def __init__(self, source: Source, settings: ServeSettings) -> None:
        self._source, self._settings = source, settings
        self._tmp = tempfile.TemporaryDirectory(prefix="pbf-serve-")
        self._model = BackgroundLoader(self._load, f"{settings.variant} model")

    def _load(self) -> tuple[ServedModel, Callable[[np.ndarray], np.ndarray]]:
        served = self._source(Path(self._tmp.name))
        predict, runtime = open_predictor(
            served.path,
            self._settings.runtime,
            self._settings.threads or None,
            chunk=min(self._settings.tiles_per_inference, 4),  # OpenVINO: one compile per size
            warm_tile=served.spec.tile_size,
        )
        return replace(served, info={**served.info, "runtime": runtime}), predict

    @property
    def ready(self) -> bool:
        return self._model.ready

    def describe(self) -> dict:
        """``{"ready": True, "spec", "info"}`` of the model, or ``{"ready": False, "error"}``."""
        try:
            served, _ = self._model.get()
        except ModelNotReadyError as exc:
            return {"ready": False, "error": str(exc)}
        return {"ready": True, "spec": served.spec.model_dump(mode="json"), "info": served.info}

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, C, h, w)`` float32 normalised tiles → ``(N, h, w)`` float32 probabilities."""
        _, predict = self._model.get()
        return predict(tiles)


class RemoteRunner:
    """The model in the batching inference service, reached through ``client()`` (an object
    with the service's ``describe()`` and ``infer(tiles)`` calls), where the tiles of concurrent
    requests are batched together."""

    def __init__(self, client: Callable[[], Any], attempts: int = INFER_ATTEMPTS) -> None:
        self._client, self._attempts = client, attempts

    def describe(self) -> dict:
        """What the inference service says about its model.

        Raises:
            ModelNotReadyError: the inference service is not reachable (yet).
        """
        try:
            return self._client().describe()
        except Exception as exc:  # the inference service is not up (yet)
            raise ModelNotReadyError(f"inference service not reachable: {exc}") from None

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, C, h, w)`` float32 tiles → ``(N, h, w)`` float32 probabilities, remotely.

        A pooled connection the inference server closed while idle surfaces as a disconnect
        on its next use; inference is idempotent, so the call is simply repeated.
        """
        from aiohttp import ClientConnectionError  # the HTTP client of the service's client

        for attempt in range(self._attempts):
            try:
                return np.asarray(self._client().infer(tiles), dtype=np.float32)
            except (ClientConnectionError, RuntimeError) as exc:
                # aiohttp says "Connection closed." with a bare RuntimeError
                dropped = isinstance(exc, ClientConnectionError) or "closed" in str(exc).lower()
                if not dropped or attempt == self._attempts - 1:
                    raise
                logger.warning("inference connection dropped (%s); retrying", exc)
