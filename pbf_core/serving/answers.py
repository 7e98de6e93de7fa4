"""What the service answers about a segmented layer: the ``/segment`` JSON, the ``/overlay`` PNG
with its verdict headers, and the summary sentence for people and screen readers."""

from __future__ import annotations

import base64

from starlette.responses import Response

from pbf_core.deploy.overlays import render_overlay
from pbf_core.deploy.predictions import encode_png, layer_fields
from pbf_core.serving.segmentation import LayerResult


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


def segment_json(result: LayerResult, info: dict) -> dict:
    """The ``/segment`` answer: verdict, components, threshold, model ``info``, summary and
    base64 PNGs of the mask (0/255) and the overlay (see ``DefectService.segment``)."""
    overlay = render_overlay(result.image, result.mask, result.components)
    fields = layer_fields(result.prob, result.mask, result.components, result.threshold)
    return {
        **fields,
        "max_confidence": round(float(result.prob.max()), 4),
        "input": result.mode,
        "model": info,
        "summary": summarize(result),
        "overlay_png": base64.b64encode(encode_png(overlay)).decode(),
        "seconds": round(result.seconds, 4),
    }


def overlay_response(result: LayerResult, info: dict) -> Response:
    """The ``/overlay`` answer: the overlay PNG, the verdict in ``X-PBF-*`` headers."""
    png = encode_png(render_overlay(result.image, result.mask, result.components))
    headers = {
        "X-PBF-Defective": str(bool(result.components)).lower(),
        "X-PBF-Components": str(len(result.components)),
        "X-PBF-Model": f"{info['name']}/{info['version']}/{info['variant']}",
    }
    return Response(png, media_type="image/png", headers=headers)
