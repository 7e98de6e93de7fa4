"""Encoded layer files in, a flat JSON-ready prediction out (what the MLflow pyfunc model answers),
and the fields every answer about a segmented layer shares (the service's JSON too).

The same steps as the service and ``pbf predict``: decode as stored (:func:`decode_image`),
normalise as the model's spec says, tile at native resolution, threshold with the spec's
threshold, find components. One layer is ``{"image": bytes}`` (one view, or an RGB file of the
a/b/c views) or ``{"a": bytes, "b": bytes, "c": bytes}``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from pbf_core.data.imaging import DEFAULT_MAX_PIXELS, decode_image
from pbf_core.deploy.inference import Segmentation
from pbf_core.deploy.overlays import Component

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


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W)`` uint8 or ``(H, W, 3)`` uint8 RGB array."""
    arr = image if image.ndim == 2 else np.ascontiguousarray(image[:, :, ::-1])
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError(f"could not encode a PNG of shape {image.shape}")
    return buf.tobytes()


def layer_fields(
    prob: np.ndarray, mask: np.ndarray, components: Sequence[Component], threshold: float
) -> dict[str, Any]:
    """What every answer about a segmented layer says (the service's JSON and the pyfunc row):
    verdict, defect area, the first :data:`MAX_COMPONENTS` components, threshold, size and the
    mask as a base64 PNG (0/255)."""
    h, w = mask.shape
    return {
        "is_defective": bool(components),
        "defect_area_pct": round(100.0 * float(mask.mean()), 4),
        "num_components": len(components),
        "components": [c.to_dict() for c in components[:MAX_COMPONENTS]],
        "threshold": float(threshold),
        "width": w,
        "height": h,
        "mask_png": base64.b64encode(encode_png(mask.astype(np.uint8) * 255)).decode(),
    }


def prediction_record(seg: Segmentation) -> dict[str, Any]:
    """One flat record: :func:`layer_fields` with the components as JSON text, plus a summary
    of the probability map."""
    fields = layer_fields(seg.prob, seg.mask, seg.components, seg.threshold)
    return {
        **fields,
        "components": json.dumps(fields["components"]),
        "prob_max": round(float(seg.prob.max()), 4),
        "prob_mean": round(float(seg.prob.mean()), 6),
        "prob_p99": round(float(np.percentile(seg.prob, 99)), 4),
    }
