"""What a segmentation shows a person: defect components with their boxes, and overlay images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pbf_core.data.imaging import normalize, to_gray

OVERLAY_RED = (255, 0, 0)
OVERLAY_YELLOW = (255, 255, 0)


@dataclass(frozen=True)
class Component:
    """One predicted defect: bounding box (px, ``x1``/``y1`` exclusive), area, peak probability."""

    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    max_prob: float

    def to_dict(self) -> dict[str, int | float]:
        return {
            "bbox": [self.x0, self.y0, self.x1, self.y1],
            "area_px": self.area,
            "max_prob": round(self.max_prob, 4),
        }


def label_peaks(labels: np.ndarray, prob: np.ndarray, n: int) -> np.ndarray:
    """``(n,)`` float32: the highest ``prob`` under each of the ``n`` labels (0 for label 0)."""
    peak = np.zeros(n, np.float32)
    fg = labels > 0
    np.maximum.at(peak, labels[fg], prob[fg].astype(np.float32))
    return peak


def find_components(mask: np.ndarray, prob: np.ndarray) -> tuple[Component, ...]:
    """8-connected components of ``mask`` with bbox, area (px) and max of ``prob`` inside.

    Args:
        mask: ``(H, W)`` bool.
        prob: ``(H, W)`` float32 probabilities.

    Returns:
        Components sorted by descending peak probability.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return ()
    peak = label_peaks(labels, prob, n)
    comps = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        comps.append(Component(x, y, x + w, y + h, area, float(peak[i])))
    return tuple(sorted(comps, key=lambda c: -c.max_prob))


def _display_gray(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 for display from ``(C, H, W)``/``(H, W)`` float [0, 1] or uint8/16."""
    x = np.asarray(image)
    if x.ndim == 3:
        x = x.mean(axis=0) if np.issubdtype(x.dtype, np.floating) else to_gray(x.transpose(1, 2, 0))
    if np.issubdtype(x.dtype, np.floating):
        return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.round(normalize(x, "fullscale") * 255.0).astype(np.uint8)


def render_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    components: tuple[Component, ...] | list[Component] = (),
    alpha: float = 0.45,
) -> np.ndarray:
    """Grey layer with the mask in translucent red and a yellow box around each component.

    Args:
        image: ``(C, H, W)`` float in [0, 1] (views averaged) or ``(H, W)`` float/uint8/uint16.
        mask: ``(H, W)`` bool.
        components: boxes to draw (see :func:`find_components`).
        alpha: opacity of the red mask.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    gray = _display_gray(image)
    if gray.shape != mask.shape:
        raise ValueError(f"image {gray.shape} and mask {mask.shape} differ in size")
    rgb = np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32)
    m = mask.astype(bool)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * np.array(OVERLAY_RED, np.float32)
    out = np.round(rgb).astype(np.uint8)
    for c in components:
        # A 1-px margin keeps the box from covering the defect it frames.
        x0, y0 = max(c.x0 - 1, 0), max(c.y0 - 1, 0)
        x1, y1 = min(c.x1, out.shape[1] - 1), min(c.y1, out.shape[0] - 1)
        cv2.rectangle(out, (x0, y0), (x1, y1), OVERLAY_YELLOW, thickness=1)
    return out


def write_overlay(path: str | Path, overlay: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` uint8 RGB overlay as PNG (atomically)."""
    if overlay.ndim != 3 or overlay.shape[2] != 3 or overlay.dtype != np.uint8:
        raise ValueError(f"overlay must be (H, W, 3) uint8, got {overlay.shape} {overlay.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(overlay[:, :, ::-1]))
    if not ok:
        raise OSError(f"{path}: could not encode overlay")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)
    return path
