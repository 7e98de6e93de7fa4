"""BentoML service: uploaded layer → defect mask, components and overlay, plus the web page.

``bentoml serve service:DefectService`` starts :class:`DefectService` (the entry point): it
checks and decodes uploads, normalises and tiles the layer as the model's metadata says, runs the
ONNX model on the tiles, stitches the tile probabilities, finds the components and renders the
overlay; it serves the page at ``/``.

What runs the model (``PBF_SERVE_RUNTIME``): ``auto`` (default) takes OpenVINO when it is
installed, else ONNX Runtime; ``openvino`` or ``onnxruntime`` choose. Both read the same ONNX
file. On the 2-core EPYC dev box OpenVINO served 37-41 % more requests per second at concurrency 8
than ONNX Runtime (``benchmarks/serve.py --onnxruntime``, two runs, each side by side), its
masks matching ONNX Runtime's at Dice 0.997. At load OpenVINO is checked against ONNX Runtime on the same file
(:func:`pbf_core.runtimes.open_predictor`); ``auto`` falls back to ONNX Runtime if they differ.
Answers name the runtime (``model.runtime``).

Where the model runs (``PBF_SERVE_BATCHING``):

- off (default): in each entry process (one per core, one thread per inference). On CPU,
  batching buys nothing: ONNX Runtime's int8 CPU time per 256² tile does not fall with the
  batch (7.2-8.4 ms from 1 to 36 tiles per run), while handing the tiles to other processes
  costs serialisation and HTTP both ways: ``benchmarks/serve.py --batching`` measured 99
  CPU-ms per 512² request in process against 117 batched, and 22-35 % more requests per second
  at concurrency 8 in process (three runs, ONNX Runtime).
- on: BentoML's adaptive batching. :class:`TileInference` owns the model in its own processes
  and its ``infer`` is batchable, so the tiles of concurrent requests are merged into one call,
  and inference is sized apart from request handling. Big batches pay on accelerators; both
  runtimes here run on the CPU.

Every number that shapes a prediction (views, normalisation, tile size and overlap, decision
threshold) comes from the model's metadata; nothing here is a model constant.

Settings (environment):

- ``PBF_SERVE_VARIANT``: ``int8`` (default) or ``fp32``.
- ``PBF_SERVE_RUNTIME``: ``auto`` (default), ``openvino`` or ``onnxruntime``.
- ``PBF_SERVE_SOURCE``: ``store`` (default: the BentoML model written by ``pbf package``, the one a
  bento carries) or ``tracking`` (download ``models:/<registry>@<alias>`` from
  ``PBF_TRACKING_URI``/``MLFLOW_TRACKING_URI``; the fp32 variant is ``@<alias>-fp32``).
- ``PBF_SERVE_MODEL`` (BentoML tag, default ``pbf-defect-segmenter:latest``), ``PBF_SERVE_ALIAS``
  (default ``champion``).
- ``PBF_SERVE_MAX_UPLOAD_MB`` (per file), ``PBF_SERVE_MAX_PIXELS`` (per image).
- ``PBF_SERVE_HEAP_KEEP_MB`` (freed memory each process keeps for the next request, default 256;
  0 = the C library's default, see :func:`pbf_core.processes.keep_freed_memory`).
- ``PBF_SERVE_WORKERS`` (entry processes; default 0 = one per core, or 1 with batching),
  ``PBF_SERVE_THREADS`` (threads per inference, default 1; 0 = one per core; OpenVINO runs as
  many inferences at once as fit the cores),
  ``PBF_SERVE_TILES_PER_CALL`` (default 0 = 3 in process, 16 with batching).
- With batching: ``PBF_SERVE_INFERENCE_WORKERS`` (inference processes, default 0 = one per core),
  ``PBF_SERVE_MAX_BATCH_TILES``, ``PBF_SERVE_MAX_LATENCY_MS``.

One single-threaded model per core serves the most requests per second; one request alone then
runs on one core, so for the lowest latency of single requests use ``PBF_SERVE_WORKERS=1
PBF_SERVE_THREADS=0``.
"""

from __future__ import annotations

import base64
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import anyio
import bentoml
import cv2
import numpy as np
from bentoml.validators import ContentType
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pbf_core.data.imaging import decode_image
from pbf_core.deploy.inputs import prepare_input
from pbf_core.deploy.metadata import read_onnx_spec
from pbf_core.deploy.overlays import find_components, render_overlay
from pbf_core.deploy.runtimes import open_predictor
from pbf_core.deploy.tiling import predict_tiled
from pbf_core.errors import ImageReadError, LayerSetError
from pbf_core.model.spec import ModelSpec
from pbf_core.serving.memory import keep_freed_memory

logger = logging.getLogger("pbf.service")

STATIC = Path(__file__).resolve().parent / "static"
SINGLE_FIELD = "image"
TRIPLET_FIELDS = ("a", "b", "c")
UPLOAD_FIELDS = (SINGLE_FIELD, *TRIPLET_FIELDS)
#: Components listed in a JSON answer; the count and the mask cover the rest.
MAX_COMPONENTS = 200
#: Tries of one inference call when the connection to the inference service drops.
INFER_ATTEMPTS = 3


class ServeSettings(BaseSettings):
    """``PBF_SERVE_*`` environment variables (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="PBF_SERVE_", extra="ignore")

    variant: Literal["int8", "fp32"] = "int8"
    source: Literal["store", "tracking"] = "store"
    model: str = "pbf-defect-segmenter:latest"
    alias: str = "champion"
    max_upload_mb: float = 48.0
    max_pixels: int = 36_000_000
    threads: int = 1
    max_batch_tiles: int = 32
    max_latency_ms: int = 60_000
    tiles_per_call: int = 0
    workers: int = 0
    inference_workers: int = 0
    batching: bool = False
    heap_keep_mb: int = 256
    runtime: Literal["auto", "openvino", "onnxruntime"] = "auto"

    @property
    def tiles_per_inference(self) -> int:
        """Tiles per model call: set, or 3 in process (the CPU time per tile of concurrent runs
        was lowest there: ONNX Runtime's rises ~8 % to 9 tiles, OpenVINO's ~5 %) and 16 to
        the batching service (fewer hops)."""
        return self.tiles_per_call or (16 if self.batching else 3)


SETTINGS = ServeSettings()


keep_freed_memory(SETTINGS.heap_keep_mb)


class ModelNotReadyError(RuntimeError):
    """The model is not loaded (yet); carries the last loading error."""


class UploadError(ValueError):
    """A request the service cannot use: HTTP status, the field at fault and the reason."""

    def __init__(self, status: int, field: str | None, reason: str, kind: str) -> None:
        self.status, self.field, self.reason, self.kind = status, field, reason, kind
        super().__init__(reason)

    def response(self) -> JSONResponse:
        body = {"error": self.reason, "kind": self.kind, "field": self.field}
        return JSONResponse(body, status_code=self.status)


# ---------------------------------------------------------------- the model and where it comes from


@dataclass(frozen=True)
class ServedModel:
    """The ONNX file served, its spec (from the file's metadata) and what answers report."""

    path: Path
    spec: ModelSpec
    info: dict[str, Any]  # name, version, variant, source, bento_model, data_digest


def _from_store(settings: ServeSettings) -> ServedModel:
    """The variant's file in the BentoML model written by ``tasks.packaging.package_onnx``."""
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(settings.model)
    except NotFound:
        raise ModelNotReadyError(
            f"BentoML model {settings.model} not found in the store; run `pbf package` first"
        ) from None
    meta = stored.info.metadata
    variants = meta.get("variants", {})
    if settings.variant not in variants:
        raise ModelNotReadyError(
            f"{stored.tag} has no {settings.variant} variant (has {', '.join(variants)})"
        )
    entry = variants[settings.variant]
    path = Path(stored.path) / entry["file"]
    return ServedModel(
        path,
        read_onnx_spec(path),
        {
            "name": meta.get("registry_name", stored.tag.name),
            "version": entry.get("version") or stored.tag.version,
            "variant": settings.variant,
            "source": meta.get("source"),
            "bento_model": str(stored.tag),
            "data_digest": meta.get("data_digest"),
        },
    )


def _from_tracking(settings: ServeSettings, into: Path) -> ServedModel:
    """Download the alias's ONNX file from the tracking server (MLflow imported only here)."""
    import os

    import mlflow

    from pbf_core.config import Settings

    core = Settings()
    uri = core.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ModelNotReadyError(
            "PBF_SERVE_SOURCE=tracking needs PBF_TRACKING_URI or MLFLOW_TRACKING_URI"
        )
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    alias = settings.alias if settings.variant == "int8" else f"{settings.alias}-fp32"
    version = mlflow.MlflowClient(uri, uri).get_model_version_by_alias(core.registry_name, alias)
    local = mlflow.artifacts.download_artifacts(
        f"models:/{core.registry_name}/{version.version}", dst_path=str(into)
    )
    path = next(Path(local).rglob("*.onnx"))
    spec = read_onnx_spec(path)
    return ServedModel(
        path,
        spec,
        {
            "name": core.registry_name,
            "version": str(version.version),
            "variant": settings.variant,
            "source": f"models:/{core.registry_name}@{alias}",
            "bento_model": None,
            "data_digest": spec.train_data_digest,
        },
    )


T = TypeVar("T")


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
                self._error = f"{type(exc).__name__}: {exc}"
                logger.warning("%s not loaded (%s); retrying in %.0f s", self._what, exc, wait)
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


# ---------------------------------------------------------------------------- tile inference


def _bento_model() -> bentoml.models.BentoModel | None:
    """The store model a bento must carry (none when serving from a tracking server)."""
    if SETTINGS.source != "store":
        return None
    return bentoml.models.BentoModel(SETTINGS.model)


class ModelRunner:
    """The served ONNX model inside one process, loaded in the background.

    Request threads call :meth:`infer` concurrently (both runtimes are thread-safe and release
    the GIL); serialising them behind a lock left cores idle (about 6 % fewer requests per second
    at concurrency 8 on 2 cores, ONNX Runtime).
    """

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="pbf-serve-")
        self._model = BackgroundLoader(self._load, f"{SETTINGS.variant} model")

    def _load(self) -> tuple[ServedModel, Callable[[np.ndarray], np.ndarray]]:
        if SETTINGS.source == "tracking":
            served = _from_tracking(SETTINGS, Path(self._tmp.name))
        else:
            served = _from_store(SETTINGS)
        predict, runtime = open_predictor(
            served.path,
            SETTINGS.runtime,
            SETTINGS.threads or None,
            chunk=min(SETTINGS.tiles_per_inference, 4),  # OpenVINO: one compile per size
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


@bentoml.service(
    name="pbf_tile_inference",
    workers=SETTINGS.inference_workers or "cpu_count",
    threads=1,
    traffic={"timeout": 600},
    # BentoML renews its client session to this service every `max_requests` calls and closes the
    # old one under the calls still using it (500s under load); renew rarely, retry the rest.
    runner_connection={"max_requests": 1_000_000, "max_age": 86_400.0},
)
class TileInference:
    """``PBF_SERVE_BATCHING=on``: runs the model on tiles; concurrent requests' tiles are batched."""

    model_ref = _bento_model()

    def __init__(self) -> None:
        self._runner = ModelRunner()

    def __is_ready__(self) -> bool:
        return self._runner.ready

    @bentoml.api
    def describe(self) -> dict:
        """``{"ready": True, "spec", "info"}`` of the served model, or ``{"ready": False, "error"}``."""
        return self._runner.describe()

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=SETTINGS.max_batch_tiles,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def infer(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, C, h, w)`` float32 normalised tiles → ``(N, h, w)`` float32 probabilities."""
        return self._runner.infer(tiles)


# ------------------------------------------------------------------------- request handling


@dataclass(frozen=True)
class LayerResult:
    """One segmented upload."""

    image: np.ndarray  # (C, H, W) float32 network input, for the overlay
    prob: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool
    components: tuple
    threshold: float
    mode: str  # "single" or "triplet"
    seconds: float


def _png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W)`` uint8 or ``(H, W, 3)`` uint8 RGB array."""
    arr = image if image.ndim == 2 else np.ascontiguousarray(image[:, :, ::-1])
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError(f"could not encode a PNG of shape {image.shape}")
    return buf.tobytes()


def summarize(result: LayerResult) -> str:
    """One or two sentences for people and screen readers."""
    th = result.threshold
    peak = float(result.prob.max()) if result.prob.size else 0.0
    if not result.components:
        return f"No defect found: highest defect probability {peak:.2f} is below the threshold {th:.2f}."
    n = len(result.components)
    area = 100.0 * float(result.mask.mean())
    top = result.components[0]
    return (
        f"Defect found: {n} region{'s' if n > 1 else ''} covering {area:.2f}% of the layer, "
        f"highest probability {peak:.2f} (threshold {th:.2f}). Most confident region: "
        f"x {top.x0} to {top.x1}, y {top.y0} to {top.y1}, {top.area} pixels."
    )


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


def _replay(body: bytes, receive: Any) -> Callable:
    """An ASGI ``receive`` that yields ``body`` once, then defers to ``receive``."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent and receive is not None:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _page_app() -> Starlette:
    """``/`` (the page), ``/static/*`` and ``GET /model`` (what the page shows about the model)."""

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def model(_: Request) -> Response:
        service = bentoml.get_current_service()
        try:
            described = await anyio.to_thread.run_sync(service.description)
        except ModelNotReadyError as exc:
            return JSONResponse({"ready": False, "error": str(exc)}, status_code=503)
        return JSONResponse({"ready": True, **described})

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/model", model, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


#: An optional file field: a list, so a field sent twice is noticed (BentoML cannot validate
#: ``Path | None``). One file per field is accepted.
Upload = list[Path]
EMPTY = Field(default_factory=list)


@bentoml.asgi_app(_page_app(), path="/")
@bentoml.service(
    name="pbf_defect_segmenter",
    workers=SETTINGS.workers or (1 if SETTINGS.batching else "cpu_count"),
    threads=16,
    traffic={"timeout": 600},
)
class DefectService:
    """Segments uploaded layers: ``POST /segment`` (JSON), ``POST /overlay`` (PNG), ``GET /``."""

    if SETTINGS.batching:
        tiles = bentoml.depends(TileInference)
    else:
        model_ref = _bento_model()

    def __init__(self) -> None:
        self._described: dict | None = None
        self._spec: ModelSpec | None = None  # the described spec, validated once
        self._lock = threading.Lock()
        self._runner = None if SETTINGS.batching else ModelRunner()

    def __is_ready__(self) -> bool:
        try:
            self.description()
        except ModelNotReadyError:
            return False
        return True

    def description(self) -> dict:
        """``{"spec", "info"}`` of the loaded model (asked once of :class:`TileInference` when batching).

        Called from BentoML's worker threads (the dependency's client needs one), by the readiness
        probe and by requests.

        Raises:
            ModelNotReadyError: the model is not loaded yet, with the reason.
        """
        if self._described is None:
            with self._lock:
                if self._described is None:
                    answer = self._describe_model()
                    if not answer.get("ready"):
                        raise ModelNotReadyError(answer.get("error", "model not loaded"))
                    self._spec = ModelSpec.model_validate(answer["spec"])
                    self._described = {"spec": answer["spec"], "info": answer["info"]}
        return self._described

    def _describe_model(self) -> dict:
        if self._runner is not None:
            return self._runner.describe()
        try:
            return self.tiles.describe()
        except Exception as exc:  # the inference service is not up (yet)
            raise ModelNotReadyError(f"inference service not reachable: {exc}") from None

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        """Tiles → probabilities, in this process or through :class:`TileInference` (batched
        with other requests' tiles).

        A pooled connection the inference server closed while idle surfaces as a disconnect
        on its next use; inference is idempotent, so the call is simply repeated.
        """
        if self._runner is not None:
            return self._runner.infer(batch)
        from aiohttp import ClientConnectionError

        for attempt in range(INFER_ATTEMPTS):
            try:
                return np.asarray(self.tiles.infer(batch), dtype=np.float32)
            except (ClientConnectionError, RuntimeError) as exc:
                # aiohttp says "Connection closed." with a bare RuntimeError
                dropped = isinstance(exc, ClientConnectionError) or "closed" in str(exc).lower()
                if not dropped or attempt == INFER_ATTEMPTS - 1:
                    raise
                logger.warning("inference connection dropped (%s); retrying", exc)

    def _read(self, field: str, path: Path) -> np.ndarray:
        limit = int(SETTINGS.max_upload_mb * 1024**2)
        size = path.stat().st_size
        if size > limit:
            raise UploadError(
                413,
                field,
                f"upload {field!r}: {size:,} bytes exceeds {SETTINGS.max_upload_mb:g} MiB",
                "size",
            )
        try:
            return decode_image(
                path.read_bytes(), f"upload {field!r}", max_pixels=SETTINGS.max_pixels
            )
        except ImageReadError as exc:
            raise UploadError(422, field, str(exc), "image") from None

    def _inputs(self, uploads: Mapping[str, list[Path]]) -> tuple[Any, str]:
        """The decoded single image or ``{a, b, c}`` mapping, and the mode.

        Raises:
            UploadError: no file, more than one file in a field, ``image`` mixed with a triplet,
                an incomplete triplet (400), or a file the service cannot read (413/422).
        """
        sent = [k for k in UPLOAD_FIELDS if uploads.get(k)]
        triplet = [k for k in TRIPLET_FIELDS if k in sent]
        for field in sent:
            if len(uploads[field]) > 1:
                raise UploadError(
                    400,
                    field,
                    f"{len(uploads[field])} files in field {field!r}; send one file per field",
                    "request",
                )
        if not sent:
            raise UploadError(
                400, None, "no file uploaded: send 'image', or 'a', 'b' and 'c'", "request"
            )
        if SINGLE_FIELD in sent and triplet:
            raise UploadError(
                400,
                SINGLE_FIELD,
                f"send either 'image' or the triplet 'a', 'b', 'c', not both (got {', '.join(sent)})",
                "request",
            )
        if triplet and len(triplet) != len(TRIPLET_FIELDS):
            missing = [k for k in TRIPLET_FIELDS if k not in triplet]
            raise UploadError(
                400,
                missing[0],
                f"a triplet needs 'a', 'b' and 'c'; missing {', '.join(repr(m) for m in missing)}",
                "request",
            )
        if SINGLE_FIELD in sent:
            return self._read(SINGLE_FIELD, uploads[SINGLE_FIELD][0]), "single"
        return {k: self._read(k, uploads[k][0]) for k in TRIPLET_FIELDS}, "triplet"

    def _segment(self, uploads: Mapping[str, list[Path]]) -> tuple[LayerResult, dict]:
        t0 = time.perf_counter()
        try:
            described = self.description()
        except ModelNotReadyError as exc:
            raise UploadError(503, None, str(exc), "model") from None
        spec = self._spec
        raw, mode = self._inputs(uploads)
        try:
            x = prepare_input(raw, spec)
        except LayerSetError as exc:
            raise UploadError(422, None, str(exc), "layer_set") from None
        except ValueError as exc:
            field = SINGLE_FIELD if mode == "single" else None
            raise UploadError(422, field, f"input does not fit the model: {exc}", "shape") from None
        prob = predict_tiled(
            self._predict, x, spec.tile_size, spec.tile_overlap, SETTINGS.tiles_per_inference
        )
        mask = prob >= spec.threshold
        comps = find_components(mask, prob)
        result = LayerResult(x, prob, mask, comps, spec.threshold, mode, time.perf_counter() - t0)
        return result, described["info"]

    def _answer(self, uploads: Mapping[str, list[Path]], render: Callable) -> Any:
        try:
            result, info = self._segment(uploads)
        except UploadError as exc:
            logger.info("refused upload: %s", exc.reason)
            return exc.response()
        return render(result, info)

    @bentoml.api(route="/segment")
    def segment(
        self,
        image: Upload = EMPTY,
        a: Upload = EMPTY,
        b: Upload = EMPTY,
        c: Upload = EMPTY,
    ) -> dict:
        """Segment one layer: ``image`` (one view, or an RGB file of the a/b/c views) or ``a``, ``b``, ``c``.

        Returns JSON: ``is_defective``, ``max_confidence``, ``defect_area_pct``, ``components``
        (bbox ``[x0, y0, x1, y1]`` px with x1/y1 exclusive, ``area_px``, ``max_prob``),
        ``threshold``, ``model`` (name, version, variant), ``summary`` and base64 PNGs ``mask_png``
        (0/255) and ``overlay_png`` (red mask, yellow boxes). Bad uploads get 4xx JSON with
        ``error``, ``kind`` and ``field``.
        """

        def render(result: LayerResult, info: dict) -> dict:
            overlay = render_overlay(result.image, result.mask, result.components)
            comps = result.components
            h, w = result.mask.shape
            return {
                "is_defective": bool(comps),
                "max_confidence": round(float(result.prob.max()), 4),
                "defect_area_pct": round(100.0 * float(result.mask.mean()), 4),
                "num_components": len(comps),
                "components": [c.to_dict() for c in comps[:MAX_COMPONENTS]],
                "threshold": result.threshold,
                "width": w,
                "height": h,
                "input": result.mode,
                "model": info,
                "summary": summarize(result),
                "mask_png": base64.b64encode(_png(result.mask.astype(np.uint8) * 255)).decode(),
                "overlay_png": base64.b64encode(_png(overlay)).decode(),
                "seconds": round(result.seconds, 4),
            }

        return self._answer({"image": image, "a": a, "b": b, "c": c}, render)

    @bentoml.api(route="/overlay")
    def overlay(
        self,
        image: Upload = EMPTY,
        a: Upload = EMPTY,
        b: Upload = EMPTY,
        c: Upload = EMPTY,
    ) -> Annotated[Path, ContentType("image/png")]:
        """The overlay PNG of one layer (same inputs as ``/segment``); the verdict in headers."""

        def render(result: LayerResult, info: dict) -> Response:
            png = _png(render_overlay(result.image, result.mask, result.components))
            headers = {
                "X-PBF-Defective": str(bool(result.components)).lower(),
                "X-PBF-Components": str(len(result.components)),
                "X-PBF-Model": f"{info['name']}/{info['version']}/{info['variant']}",
            }
            return Response(png, media_type="image/png", headers=headers)

        return self._answer({"image": image, "a": a, "b": b, "c": c}, render)


DefectService.add_asgi_middleware(
    RequestGuard,
    max_body_bytes=int(SETTINGS.max_upload_mb * 1024**2) * len(TRIPLET_FIELDS) + 1024**2,
    file_routes=("/segment", "/overlay"),
)

__all__ = ["DefectService", "TileInference"]
