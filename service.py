"""BentoML service: uploaded layer → defect mask, components and overlay, plus the web page.

``bentoml serve service:DefectService`` starts :class:`DefectService` (the entry point): it
serves ``POST /segment`` (JSON), ``POST /overlay`` (PNG) and the page at ``/``. With
``PBF_SERVE_BATCHING=true`` the model runs in :class:`TileInference`, whose ``infer`` BentoML
batches across concurrent requests; by default it runs in each entry process.

This file holds the BentoML classes, their API signatures and where the model comes from (the
BentoML model store, or the tracking server's registry). The rest is in :mod:`pbf_core.serving`:
upload checks, the request guard and admission, the API key and security headers, the page, the
model runners, segmentation and answers. The settings (``PBF_SERVE_*``) are documented in
:mod:`pbf_core.serving.settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import Field

from pbf_core.redaction import redact_logging
from pbf_core.serving.access import AccessGuard
from pbf_core.serving.admission import Admission
from pbf_core.serving.answers import overlay_response, segment_json
from pbf_core.serving.guard import GuardLimits, RequestGuard
from pbf_core.serving.memory import keep_freed_memory
from pbf_core.serving.model import (
    ModelNotReadyError,
    ServedModel,
    packaged_model,
    registered_model,
)
from pbf_core.serving.page import page_app
from pbf_core.serving.runner import ModelRunner, RemoteRunner
from pbf_core.serving.segmentation import LayerSegmenter
from pbf_core.serving.settings import ServeSettings

STATIC = Path(__file__).resolve().parent / "static"
SETTINGS = ServeSettings()

keep_freed_memory(SETTINGS.heap_keep_mb)
redact_logging("bentoml", "pbf")


def _from_store(settings: ServeSettings) -> ServedModel:
    """The variant's file in the BentoML model written by ``tasks.packaging.package_onnx``."""
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(settings.model)
    except NotFound:
        raise ModelNotReadyError(
            f"BentoML model {settings.model} not found in the store; run `pbf package` first"
        ) from None
    return packaged_model(
        Path(stored.path), str(stored.tag), stored.info.metadata, settings.variant
    )


def _from_tracking(settings: ServeSettings, into: Path) -> ServedModel:
    """Download the alias's ONNX file from the tracking server (MLflow imported only here)."""
    from pbf_core.config import Settings
    from tasks.tracking.registry import download_alias
    from tasks.tracking.store import tracking_uri

    core = Settings()
    if not tracking_uri(core):
        raise ModelNotReadyError(
            "PBF_SERVE_SOURCE=tracking needs PBF_TRACKING_URI or MLFLOW_TRACKING_URI"
        )
    alias = settings.registry_alias
    found = download_alias(alias, into, core)
    if found is None:
        raise ModelNotReadyError(f"{core.registry_name} has no version with the alias @{alias}")
    return registered_model(found.path, core.registry_name, found.version, alias, settings.variant)


def _served_model(into: Path) -> ServedModel:
    """The model ``PBF_SERVE_SOURCE`` names (``into``: a scratch folder for downloads)."""
    if SETTINGS.source == "tracking":
        return _from_tracking(SETTINGS, into)
    return _from_store(SETTINGS)


def _bento_model() -> bentoml.models.BentoModel | None:
    """The store model a bento must carry (none when serving from a tracking server)."""
    if SETTINGS.source != "store":
        return None
    return bentoml.models.BentoModel(SETTINGS.model)


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
        self._runner = ModelRunner(_served_model, SETTINGS)

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


#: An optional file field: a list, so a field sent twice is noticed (BentoML cannot validate
#: ``Path | None``). One file per field is accepted.
Upload = list[Path]
EMPTY = Field(default_factory=list)


@bentoml.asgi_app(page_app(STATIC, lambda: bentoml.get_current_service().description()), path="/")
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
        if SETTINGS.batching:
            runner = RemoteRunner(lambda: self.tiles)
        else:
            runner = ModelRunner(_served_model, SETTINGS)
        self._layers = LayerSegmenter(runner, SETTINGS)

    def __is_ready__(self) -> bool:
        return self._layers.ready

    def description(self) -> dict:
        """``{"spec", "info"}`` of the loaded model (asked once of :class:`TileInference` when batching).

        Called from BentoML's worker threads (the dependency's client needs one), by the readiness
        probe and by requests.

        Raises:
            ModelNotReadyError: the model is not loaded yet, with the reason.
        """
        return self._layers.description()

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
        return self._layers.answer({"image": image, "a": a, "b": b, "c": c}, segment_json)

    @bentoml.api(route="/overlay")
    def overlay(
        self,
        image: Upload = EMPTY,
        a: Upload = EMPTY,
        b: Upload = EMPTY,
        c: Upload = EMPTY,
    ) -> Annotated[Path, ContentType("image/png")]:
        """The overlay PNG of one layer (same inputs as ``/segment``); the verdict in headers."""
        return self._layers.answer({"image": image, "a": a, "b": b, "c": c}, overlay_response)


# First added runs first: the key is checked before an upload is read.
DefectService.add_asgi_middleware(AccessGuard, api_key=SETTINGS.api_key_value)
DefectService.add_asgi_middleware(
    RequestGuard,
    limits=GuardLimits(SETTINGS.max_body_bytes, SETTINGS.body_timeout_s),
    file_routes=("/segment", "/overlay"),
    admission=Admission(SETTINGS.max_active, SETTINGS.max_queued),
)

__all__ = ["DefectService", "TileInference"]
