"""Encoded layer files in, a flat JSON-ready prediction out (what the MLflow pyfunc model answers).

The same steps as the service and ``pbf predict``: decode as stored (:func:`decode_image`),
normalise as the model's spec says, tile at native resolution, threshold with the spec's
threshold, find components. One layer is ``{"image": bytes}`` (one view, or an RGB file of the
a/b/c views) or ``{"a": bytes, "b": bytes, "c": bytes}``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from pbf_core.data.imaging import DEFAULT_MAX_PIXELS, decode_image
from pbf_core.deploy.inference import Segmentation

SINGLE_FIELD = "image"
#: Components listed in a prediction; ``num_components`` and the mask cover the rest.
MAX_COMPONENTS = 200


def _given(value: Any) -> bool:
    """Whether a table cell holds a file (pandas fills absent cells with None or NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def decode_layer(
    files: Mapping[str, Any], views: tuple[str, ...], max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray | dict[str, np.ndarray]:
    """The raw layer of ``{"image": bytes}`` or one file per view in ``views``.

    Raises:
        ValueError: no file, an incomplete set of views, or a file that is not a readable
            image (:class:`~pbf_core.errors.ImageReadError`), naming the field.
    """
    given = {k: v for k, v in files.items() if _given(v)}
    if SINGLE_FIELD in given:
        return decode_image(_bytes(given[SINGLE_FIELD]), SINGLE_FIELD, max_pixels=max_pixels)
    missing = [v for v in views if v not in given]
    if missing:
        fields = ", ".join(repr(v) for v in (SINGLE_FIELD, *views))
        raise ValueError(
            f"a layer needs 'image' or every view; missing {missing} (fields {fields})"
        )
    return {v: decode_image(_bytes(given[v]), f"view {v!r}", max_pixels=max_pixels) for v in views}


def _bytes(value: Any) -> bytes:
    """File content: bytes as they are, a str as base64 (how JSON carries a file)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value, validate=True)
    raise ValueError(f"expected the file's bytes or base64 text, got {type(value).__name__}")


def prediction_record(seg: Segmentation) -> dict[str, Any]:
    """One flat record: verdict, probability summary, components (JSON text) and the mask PNG."""
    prob, mask = seg.prob, seg.mask
    h, w = mask.shape
    ok, png = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError(f"could not encode the {w}x{h} mask as PNG")
    return {
        "is_defective": bool(seg.components),
        "threshold": float(seg.threshold),
        "prob_max": round(float(prob.max()), 4),
        "prob_mean": round(float(prob.mean()), 6),
        "prob_p99": round(float(np.percentile(prob, 99)), 4),
        "defect_area_pct": round(100.0 * float(mask.mean()), 4),
        "num_components": len(seg.components),
        "components": json.dumps([c.to_dict() for c in seg.components[:MAX_COMPONENTS]]),
        "width": w,
        "height": h,
        "mask_png": base64.b64encode(png.tobytes()).decode(),
    }
