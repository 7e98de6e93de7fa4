"""Segmenting an uploaded layer with the served model: uploads → :class:`LayerResult`.

Every number that shapes a prediction (views, normalisation, tile size and overlap, decision
threshold) comes from the model's spec, read from its metadata; nothing here is a model constant.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pbf_core.deploy.inputs import keep_to_bed, model_input, stored_views
from pbf_core.deploy.overlays import Component, find_components
from pbf_core.deploy.tiling import predict_layer
from pbf_core.errors import LayerSetError
from pbf_core.model.spec import ModelSpec
from pbf_core.serving.model import ModelNotReadyError
from pbf_core.serving.runner import Runner
from pbf_core.serving.settings import ServeSettings
from pbf_core.serving.uploads import SINGLE_FIELD, Mode, RawLayer, UploadError, read_uploads

logger = logging.getLogger("pbf.service")


@dataclass(frozen=True)
class LayerResult:
    """One segmented upload."""

    image: np.ndarray  # (C, H, W) float32 network input, for the overlay
    prob: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool
    components: tuple[Component, ...]  # by descending peak probability
    threshold: float
    mode: Mode
    seconds: float


def upload_views(raw: RawLayer, mode: Mode, spec: ModelSpec) -> np.ndarray:
    """The ``(C, H, W)`` views of a decoded upload as stored, in the model's order.

    Raises:
        UploadError: the views do not form a layer set, or do not fit the model (422).
    """
    try:
        return stored_views(raw, spec)
    except LayerSetError as exc:
        raise UploadError(422, None, str(exc), "layer_set") from None
    except ValueError as exc:
        field = SINGLE_FIELD if mode == "single" else None
        raise UploadError(422, field, f"input does not fit the model: {exc}", "shape") from None


class LayerSegmenter:
    """Uploads → :class:`LayerResult` with the model ``runner`` serves, and the answer to them."""

    def __init__(self, runner: Runner, settings: ServeSettings) -> None:
        self._runner, self._settings = runner, settings
        self._described: dict | None = None
        self._spec: ModelSpec | None = None  # the described spec, validated once
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        try:
            self.description()
        except ModelNotReadyError:
            return False
        return True

    def description(self) -> dict:
        """``{"spec", "info"}`` of the loaded model, asked of the runner until it is loaded.

        Raises:
            ModelNotReadyError: the model is not loaded yet, with the reason.
        """
        if self._described is None:
            with self._lock:
                if self._described is None:
                    answer = self._runner.describe()
                    if not answer.get("ready"):
                        raise ModelNotReadyError(answer.get("error", "model not loaded"))
                    self._spec = ModelSpec.model_validate(answer["spec"])
                    self._described = {"spec": answer["spec"], "info": answer["info"]}
        return self._described

    def segment(self, uploads: Mapping[str, Sequence[Path]]) -> tuple[LayerResult, dict]:
        """The segmented layer and the model's ``info``.

        Raises:
            UploadError: the model is not loaded (503) or the upload is refused (4xx).
        """
        t0 = time.perf_counter()
        try:
            described = self.description()
        except ModelNotReadyError as exc:
            raise UploadError(503, None, str(exc), "model") from None
        spec, limits = self._spec, self._settings
        raw, mode = read_uploads(
            uploads, limits.max_upload_mb, limits.max_pixels, limits.max_aspect
        )
        views = upload_views(raw, mode, spec)
        x, bed = model_input(views, spec)
        prob = predict_layer(self._runner.infer, x, spec, limits.tiles_per_inference)
        prob = keep_to_bed(prob, views, spec, bed)
        mask = prob >= spec.threshold
        comps = find_components(mask, prob)
        result = LayerResult(x, prob, mask, comps, spec.threshold, mode, time.perf_counter() - t0)
        return result, described["info"]

    def answer(
        self, uploads: Mapping[str, Sequence[Path]], render: Callable[[LayerResult, dict], Any]
    ) -> Any:
        """``render(result, info)`` of the segmented upload, or the refusal's 4xx/5xx JSON."""
        try:
            result, info = self.segment(uploads)
        except UploadError as exc:
            logger.info("refused upload: %s", exc.reason)
            return exc.response()
        return render(result, info)
