"""Defects: their shapes and sizes, where they form, and painting them into a layer.

The truth mask is exactly the set of painted pixels; instances never share a pixel.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pbf_core.config import SynthConfig
from pbf_core.data.layers import DEFECT_TYPES, defect_code
from pbf_core.data.synthetic.fields import _smooth_noise
from pbf_core.data.synthetic.specs import _FULL_SCALE, Defect
from pbf_core.data.synthetic.styles import CLASSIC, Look

#: How often each defect type occurs (hole, horizontal, incandescence, spattering, vertical).
_TYPE_PROB = {
    "hole": 0.35,
    "horizontal": 0.15,
    "incandescence": 0.25,
    "spattering": 0.15,
    "vertical": 0.10,
}
#: Dark defects keep this fraction of the light (same in every view): holes are deepest, spreading
#: lines and recoater streaks shallower, as in the am04 annotations (which measure 0.86-0.95 inside
#: their generous hand-drawn outlines).
_DARK_FACTOR = {"hole": (0.4, 0.7), "horizontal": (0.62, 0.8), "vertical": (0.7, 0.85)}
#: Bright defects move every view this far towards full scale.
_BRIGHT_ALPHA = {"incandescence": (0.3, 0.65), "spattering": (0.4, 0.75)}
_ON_PART_PROB = 0.8  # most defects form where the laser melts
_MAX_DEFECT_FRACTION = 0.02  # no single defect covers more of the image (largest real one ≈2 %)


def _blob(rng: np.random.Generator, area: float) -> np.ndarray:
    """Irregular filled blob of about ``area`` px: an ellipse with a ragged outline, bool patch."""
    r = math.sqrt(area / math.pi)
    asp = float(rng.uniform(1.0, 2.2))
    a, b = r * math.sqrt(asp), r / math.sqrt(asp)
    half = math.ceil(a) + 2
    ax = np.arange(-half, half + 1, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    th = float(rng.uniform(0, math.pi))
    u = math.cos(th) * xx + math.sin(th) * yy
    v = -math.sin(th) * xx + math.cos(th) * yy
    ragged = 0.25 * _smooth_noise(rng, yy.shape, max(0.6, r / 3))
    patch = (u / max(a, 0.5)) ** 2 + (v / max(b, 0.5)) ** 2 + ragged <= 1.0
    if not patch.any():
        patch[half, half] = True
    return patch


def _line(rng: np.random.Generator, length: int, width: int, vertical: bool) -> np.ndarray:
    """Thin slightly wavy line patch (bool), horizontal unless ``vertical``."""
    length = max(length, 2)
    pad = width + 2
    t = np.arange(length, dtype=np.float32)
    wave = 0.6 * np.sin(2 * math.pi * t / float(rng.uniform(20, 60)) + float(rng.uniform(0, 6.3)))
    across = np.arange(2 * pad + 1, dtype=np.float32)[:, None] - pad
    patch = np.abs(across - wave[None, :]) < width / 2.0 + 0.01
    patch[pad, :] = True  # never let the wave break a 1-px line
    return patch.T if vertical else patch


def _spatter(rng: np.random.Generator, size: int, max_area: float) -> np.ndarray:
    """Cluster of small round droplets ejected from the melt pool, bool patch."""
    spread = float(rng.uniform(3, 10)) * max(size / 512, 0.4)
    half = math.ceil(3 * spread) + 3
    patch = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.uint8)
    k = int(rng.integers(3, 13))
    r_scale = max(size / 512, 0.5)
    for _ in range(k):
        dy, dx = np.clip(rng.normal(0, spread, size=2), -half + 2, half - 2)
        r = max(0, round(float(rng.uniform(0.3, 1.6)) * r_scale))
        cv2.circle(patch, (half + round(float(dx)), half + round(float(dy))), r, 1, -1)
        if patch.sum() >= max_area:
            break
    return patch.astype(bool)


def _defect_patch(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Shape of one defect (bool patch); sizes follow the am04 hand annotations (area of image)."""
    img_area = float(n * n)
    if kind == "hole":  # real: median 0.005 %, p90 0.02 %, max 0.15 %
        area = float(np.clip(rng.lognormal(math.log(5e-5 * img_area), 1.0), 4, 1.5e-3 * img_area))
        return _blob(rng, area)
    if kind == "incandescence":  # real: median 0.05 %, p90 0.24 %, max 0.66 %
        area = float(np.clip(rng.lognormal(math.log(4.5e-4 * img_area), 1.1), 4, 6e-3 * img_area))
        return _blob(rng, area)
    if kind == "horizontal":  # real: median 0.04 %, max 0.12 %, thin lines
        width = 1 if n < 384 else int(rng.integers(1, 3))
        area = float(rng.uniform(1.5e-4, 1.1e-3)) * img_area
        return _line(rng, max(6, round(area / width)), width, vertical=False)
    if kind == "vertical":  # real: 0.3-0.7 %, long recoater-direction streaks
        width = 1 if n < 256 else int(rng.integers(2, 5))
        return _line(rng, round(float(rng.uniform(0.4, 0.9)) * n), width, vertical=True)
    if kind == "spattering":
        return _spatter(rng, n, max(6.0, 6e-4 * img_area))
    raise ValueError(f"unknown defect type {kind!r}; valid: {', '.join(DEFECT_TYPES)}")


def _defect_centre(
    rng: np.random.Generator, kind: str, near_part: np.ndarray, n: int
) -> tuple[int, int]:
    """Pixel ``(cy, cx)`` a defect is centred on.

    Args:
        near_part: flat indices of the pixels on or next to a part (where the laser melts).
    """
    # The recoater drags across the whole plate, so its streaks are never tied to a part.
    if kind != "vertical" and near_part.size and rng.random() < _ON_PART_PROB:
        cy, cx = divmod(int(near_part[rng.integers(near_part.size)]), n)
        return cy, cx
    cy, cx = (int(v) for v in rng.integers(0, n, size=2))
    return cy, cx


def _claim_pixels(
    patch: np.ndarray, cy: int, cx: int, types: np.ndarray
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Centre ``patch`` on ``(cy, cx)``, clip it to the image and drop pixels already painted.

    Args:
        patch: ``(ph, pw)`` bool defect shape.
        types: ``(H, W)`` uint8 defect codes painted so far (0 = free).

    Returns:
        ``(window, own)``: the ``(rows, cols)`` slices of the clipped patch in the image and the
        ``(h, w)`` bool pixels this defect owns there, or None if the patch misses the image.
    """
    h, w = types.shape
    ph, pw = patch.shape
    y0, x0 = cy - ph // 2, cx - pw // 2
    py0, px0 = max(0, -y0), max(0, -x0)
    y0c, x0c = max(0, y0), max(0, x0)
    y1c, x1c = min(h, y0 + ph), min(w, x0 + pw)
    if y1c <= y0c or x1c <= x0c:
        return None
    window = (slice(y0c, y1c), slice(x0c, x1c))
    own = patch[py0 : py0 + (y1c - y0c), px0 : px0 + (x1c - x0c)].copy()
    own &= types[window] == 0  # instances never share pixels, so areas and types stay exact
    return window, own


def _light_defect(
    rng: np.random.Generator,
    kind: str,
    sub: np.ndarray,
    own: np.ndarray,
    area: int,
    look: Look = CLASSIC,
) -> None:
    """Darken or brighten the ``own`` pixels of ``sub`` (``(3, h, w)`` float32 view, in place).

    Dark defects scale the light by the same per-pixel factor in all views, bright ones pull all
    views towards the same near-saturated level, so a defect keeps its sign under every angle.
    The look's contrast factors make them fainter or stronger.
    """
    jitter = rng.standard_normal(area).astype(np.float32)
    if kind in ("hole", "horizontal", "vertical"):
        lo, hi = _DARK_FACTOR[kind]
        depth, ceiling = float(rng.uniform(lo, hi)), 0.9
        if look.dark_contrast != 1.0:  # (classic builds stay bit-identical)
            depth, ceiling = 1.0 - (1.0 - depth) * look.dark_contrast, 0.98
        factor = np.clip(depth * (1 + 0.05 * jitter), 0.05, ceiling)
        sub[:, own] *= factor[None, :]
    else:
        lo, hi = _BRIGHT_ALPHA[kind]
        strength = float(rng.uniform(lo, hi)) * look.bright_contrast
        alpha = np.clip(strength * (1 + 0.05 * jitter), 0.1 * look.bright_contrast, 1.0)
        target = np.float32(0.98 * _FULL_SCALE)
        sub[:, own] += (target - sub[:, own]) * alpha[None, :]


def _describe_defect(
    kind: str,
    window: tuple[slice, slice],
    own: np.ndarray,
    part: np.ndarray,
    inside: np.ndarray | None = None,
) -> Defect | None:
    """The :class:`Defect` record of the ``own`` pixels of ``window`` that a machine frame does
    not hide (``inside``: ``Look.inside_frame``; None when it hides them all); ``part`` is
    ``(H, W)`` bool."""
    if inside is not None:
        own = own & inside[window]
    if not own.any():
        return None
    rows, cols = window
    ys, xs = np.nonzero(own)
    bbox = (
        int(xs.min()) + cols.start,
        int(ys.min()) + rows.start,
        int(xs.max()) + cols.start + 1,
        int(ys.max()) + rows.start + 1,
    )
    on_part = bool(part[window][own].mean() >= 0.5)
    return Defect(kind, bbox, int(own.sum()), on_part)


def clear_frame(types: np.ndarray, look: Look) -> np.ndarray:
    """``types`` with the pixels under ``look``'s machine frame set to 0 (in place)."""
    inside = look.inside_frame(types.shape[0])
    if inside is not None:
        types[~inside] = 0
    return types


def _paint_defects(
    rng: np.random.Generator,
    cfg: SynthConfig,
    value: np.ndarray,
    part: np.ndarray,
    look: Look = CLASSIC,
) -> tuple[np.ndarray, tuple[Defect, ...]]:
    """Paint about ``cfg.defects_per_layer`` defects into a layer, identically in every view.

    Args:
        rng: the layer's random stream.
        cfg: the build configuration.
        value: ``(3, H, W)`` float32 expected counts, painted in place.
        part: ``(H, W)`` bool melted cross-section; most defects form on or next to it.

    Returns:
        ``(types, defects)``: ``(H, W)`` uint8 type codes (0 = none; the truth mask is
        ``types > 0``) and the painted instances. A look with a machine frame paints and claims as
        the classic one does (same draws, same defects); the records leave out what the frame
        hides, and :func:`clear_frame` takes it out of the masks once all painting is done.
    """
    n = cfg.size
    types = np.zeros((n, n), dtype=np.uint8)
    defects: list[Defect] = []
    count = int(rng.poisson(cfg.defects_per_layer))
    if count == 0:
        return types, ()
    kinds = list(_TYPE_PROB)
    probs = np.asarray(list(_TYPE_PROB.values()))
    inside = look.inside_frame(n)
    near_part = cv2.dilate(part.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    near_idx = np.flatnonzero(near_part)
    for _ in range(count):
        kind = str(rng.choice(kinds, p=probs))
        patch = _defect_patch(rng, kind, n)
        cy, cx = _defect_centre(rng, kind, near_idx, n)
        claimed = _claim_pixels(patch, cy, cx, types)
        if claimed is None:
            continue
        window, own = claimed
        area = int(own.sum())
        if area == 0 or area > _MAX_DEFECT_FRACTION * n * n:
            continue
        _light_defect(rng, kind, value[:, window[0], window[1]], own, area, look)
        types[window][own] = defect_code(kind)  # the frame's share too, so claims stay classic
        record = _describe_defect(kind, window, own, part, inside)
        if record is not None:
            defects.append(record)
    return types, tuple(defects)
