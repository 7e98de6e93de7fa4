"""The prototype's way of serving, as the baseline of ``benchmarks/serve.py``.

A FastAPI app that loads the fp32 PyTorch model once and runs it per request: no batching
across requests, no ONNX Runtime, no quantization. It does the same work per request as the
service (same decoding, normalisation, tiling at the model's tile size, components, overlay and
base64 PNGs), so the comparison measures how the model is run, not what is computed.

    PBF_NAIVE_CHECKPOINT=model.safetensors uvicorn --app-dir benchmarks naive_app:app
"""

from __future__ import annotations

import base64
import os

import cv2
import numpy as np
from fastapi import FastAPI, UploadFile

from pbf_core.data.imaging import decode_image
from pbf_core.deploy.inference import Segmenter
from pbf_core.deploy.inputs import prepare_input
from pbf_core.deploy.overlays import render_overlay

app = FastAPI(title="naive fp32 PyTorch handler")
_segmenter = Segmenter.from_checkpoint(os.environ["PBF_NAIVE_CHECKPOINT"], device="cpu")


def _png_b64(image: np.ndarray) -> str:
    arr = image if image.ndim == 2 else np.ascontiguousarray(image[:, :, ::-1])
    return base64.b64encode(cv2.imencode(".png", arr)[1].tobytes()).decode()


@app.post("/segment")
def segment(a: UploadFile, b: UploadFile, c: UploadFile) -> dict:
    """Segment an a/b/c triplet with the fp32 PyTorch model, one request at a time per thread."""
    raw = {v: decode_image(f.file.read(), v) for v, f in (("a", a), ("b", b), ("c", c))}
    x = prepare_input(raw, _segmenter.spec)
    seg = _segmenter.segment(x)
    overlay = render_overlay(x, seg.mask, seg.components)
    return {
        "is_defective": bool(seg.components),
        "max_confidence": float(seg.prob.max()),
        "defect_area_pct": 100.0 * float(seg.mask.mean()),
        "components": [c.to_dict() for c in seg.components[:200]],
        "threshold": seg.threshold,
        "mask_png": _png_b64(seg.mask.astype(np.uint8) * 255),
        "overlay_png": _png_b64(overlay),
    }
