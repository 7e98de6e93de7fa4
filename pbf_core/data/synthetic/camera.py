"""What a look adds beyond the classic rendering: scene clutter, optics and the camera.

:func:`scene_effects` works on expected counts before sensor noise: a machine frame around the
bed, faint recoater streaks, shadow spots that only one view sees (none of them defects, so the
truth mask does not change), then defocus and motion blur. :func:`camera_effects` works on the
sensor's counts: speckle, fixed-pattern column and row offsets, hot and dead pixels, the camera's
gamma, its bit depth and a JPEG round trip. Both draw from the layer's effects stream only.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pbf_core.data.imaging import jpeg_round_trip
from pbf_core.data.synthetic.fields import _smooth_noise
from pbf_core.data.synthetic.specs import _FULL_SCALE
from pbf_core.data.synthetic.styles import Look


def _frame(rng: np.random.Generator, value: np.ndarray, types: np.ndarray, look: Look) -> None:
    """A brushed-metal machine frame around the bed (in place; defects never reach it)."""
    _, n, _ = value.shape
    width, inside = look.frame_px(n), look.inside_frame(n)
    level = look.powder_level * float(rng.uniform(0.35, 1.6))
    brushed = 1.0 + 0.06 * _smooth_noise(rng, (n, n), 0.8) + 0.1 * _smooth_noise(rng, (1, n), 6)
    metal = (level * brushed).astype(np.float32)
    for k in range(int(rng.integers(2, 7))):  # bolts: bright rings on the frame
        y, x = (int(v) for v in rng.integers(0, n, size=2))
        if inside[y, x]:
            y = width // 2 if k % 2 else n - 1 - width // 2
        cv2.circle(metal, (x, y), max(1, width // 4), float(min(level * 2.2, 60_000)), -1)
    if types[~inside].any():
        raise ValueError("a defect was painted on the machine frame")
    value[:, ~inside] = metal[~inside]


def _streaks(rng: np.random.Generator, value: np.ndarray, look: Look) -> None:
    """Faint vertical streaks of unevenly spread powder across the whole bed (in place)."""
    _, n, _ = value.shape
    profile = _smooth_noise(rng, (1, n), 1.5 * look.feature_scale)
    value *= (1.0 + look.streaks * np.clip(profile, -3, 3)).astype(np.float32)[None]


def _shadow_spots(rng: np.random.Generator, value: np.ndarray, look: Look) -> None:
    """Dark spots in one view only (a lamp's shadow of a grain or spatter): hard negatives."""
    _, n, _ = value.shape
    for _ in range(look.shadow_spots):
        view = int(rng.integers(3))
        radius = float(rng.uniform(1.5, 6.0)) * look.feature_scale
        y, x = (int(v) for v in rng.integers(0, n, size=2))
        spot = np.zeros((n, n), np.float32)
        cv2.circle(spot, (x, y), max(1, round(radius)), 1.0, -1)
        spot = cv2.GaussianBlur(spot, (0, 0), max(0.6, radius / 3))
        value[view] *= 1.0 - float(rng.uniform(0.3, 0.6)) * spot


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    size = max(3, math.ceil(length) | 1)
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1)
    return kernel / kernel.sum()


def scene_effects(
    rng: np.random.Generator, expected: np.ndarray, types: np.ndarray, look: Look
) -> np.ndarray:
    """Clutter and optics of ``look`` on ``(3, H, W)`` float32 expected counts (a new array)."""
    value = expected.copy()
    if look.frame:
        _frame(rng, value, types, look)
    if look.streaks:
        _streaks(rng, value, look)
    if look.shadow_spots:
        _shadow_spots(rng, value, look)
    if look.blur:
        sigma = look.blur * look.feature_scale
        value = np.stack([cv2.GaussianBlur(v, (0, 0), sigma) for v in value])
    if look.motion_blur >= 1:
        kernel = _motion_kernel(look.motion_blur, float(rng.uniform(0, math.pi)))
        value = np.stack(
            [cv2.filter2D(v, -1, kernel, borderType=cv2.BORDER_REFLECT) for v in value]
        )
    return value


def _quantise(counts: np.ndarray, look: Look) -> np.ndarray:
    """Gamma, then the camera's bit depth, in 16-bit counts (float32 in, float32 out)."""
    if look.gamma != 1.0:
        counts = (np.clip(counts / _FULL_SCALE, 0, 1) ** look.gamma * _FULL_SCALE).astype(
            np.float32
        )
    if look.bit_depth < 16:
        top = float(2**look.bit_depth - 1)
        counts = np.rint(np.clip(counts, 0, _FULL_SCALE) / _FULL_SCALE * top) / top * _FULL_SCALE
    return counts.astype(np.float32)


def camera_effects(rng: np.random.Generator, views: np.ndarray, look: Look) -> np.ndarray:
    """The camera of ``look`` on ``(3, H, W)`` uint16 sensor counts; returns uint16."""
    counts = views.astype(np.float32)
    _, h, w = counts.shape
    if look.speckle:
        counts *= 1.0 + look.speckle * rng.standard_normal(counts.shape, dtype=np.float32)
    if look.fixed_pattern:
        cols = rng.standard_normal((1, 1, w), dtype=np.float32)
        rows = rng.standard_normal((1, h, 1), dtype=np.float32)
        counts += look.fixed_pattern * (cols + 0.5 * rows)
    if look.salt_pepper:
        hit = rng.random(counts.shape) < look.salt_pepper
        counts[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0.0, _FULL_SCALE)
    counts = _quantise(counts, look)
    out = np.clip(np.rint(counts), 0, _FULL_SCALE).astype(np.uint16)
    return jpeg_round_trip(out, look.jpeg_quality) if look.jpeg_quality else out
