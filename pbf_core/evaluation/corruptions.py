"""Image corruptions at five severities, in the manner of ImageNet-C, for raw 16-bit layers.

Each corruption maps ``(C, H, W)`` uint16 views (raw counts, as a camera delivers them) to
corrupted views of the same shape and dtype; severity 1 is mild, 5 is harsh. The strengths reach
well beyond the training augmentation's ranges (Gaussian noise up to ~4 % of full scale, strong
blur, 5-bit quantisation, JPEG quality 15), so a benchmark over them does not just replay the
training distribution. Every corruption draws from the generator it is given: the same seed gives
the same corrupted layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from pbf_core.data.imaging import jpeg_round_trip

FULL_SCALE = 65_535.0
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: Parameter of each corruption per severity 1..5.
LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (300, 600, 1_000, 1_600, 2_500),  # std (counts)
    "shot_noise": (4, 10, 25, 60, 150),  # counts per photo-electron
    "speckle_noise": (0.03, 0.06, 0.1, 0.15, 0.22),  # multiplicative std
    "salt_pepper": (5e-4, 1e-3, 3e-3, 6e-3, 1e-2),  # fraction of stuck pixels
    "defocus_blur": (0.6, 1.0, 1.5, 2.2, 3.0),  # Gaussian sigma (px)
    "motion_blur": (3, 5, 7, 10, 14),  # length (px)
    "gain": (1.3, 1.6, 2.0, 2.6, 3.4),  # exposure multiplier (clips at full scale)
    "contrast": (0.7, 0.5, 0.35, 0.25, 0.15),  # kept fraction of the deviation from the mean
    "gamma": (1.25, 1.5, 1.8, 2.2, 2.7),  # response exponent on normalised counts
    "jpeg": (85, 70, 50, 30, 15),  # quality, through 8 bits
    "illumination": (0.2, 0.35, 0.5, 0.7, 0.9),  # linear ramp across the plate (relative)
    "fixed_pattern": (100, 200, 400, 700, 1_000),  # column offset std (counts)
    "bit_depth": (10, 8, 7, 6, 5),  # bits kept
}


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, FULL_SCALE).astype(np.uint16)


def _gaussian(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _clip(views + p * rng.standard_normal(views.shape, dtype=np.float32))


def _shot(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _clip(rng.poisson(views / p) * p)


def _speckle(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _clip(views * (1 + p * rng.standard_normal(views.shape, dtype=np.float32)))


def _salt_pepper(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    out = views.copy()
    hit = rng.random(views.shape) < p
    out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, int(FULL_SCALE))
    return out


def _defocus(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _clip(np.stack([cv2.GaussianBlur(v.astype(np.float32), (0, 0), p) for v in views]))


def _motion(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    size = int(p) | 1
    kernel = np.zeros((size, size), np.float32)
    angle = float(rng.uniform(0, math.pi))
    c, dx, dy = size // 2, math.cos(angle) * p / 2, math.sin(angle) * p / 2
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1)
    kernel /= kernel.sum()
    blurred = [cv2.filter2D(v.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT)
               for v in views]  # fmt: skip
    return _clip(np.stack(blurred))


def _gain(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _clip(views.astype(np.float32) * p)


def _contrast(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    x = views.astype(np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return _clip(mean + (x - mean) * p)


def _gamma(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return _clip((views.astype(np.float32) / FULL_SCALE) ** p * FULL_SCALE)


def _jpeg(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return jpeg_round_trip(views, int(p))


def _illumination(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    _, h, w = views.shape
    angle = float(rng.uniform(0, 2 * math.pi))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle)) * 2
    return _clip(views * (1 + p * ramp)[None])


def _fixed_pattern(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    _, _, w = views.shape
    columns = rng.standard_normal((1, 1, w), dtype=np.float32)
    return _clip(views + p * columns)


def _bit_depth(views: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    top = float(2 ** int(p) - 1)
    return _clip(np.rint(views / FULL_SCALE * top) / top * FULL_SCALE)


Corruption = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian,
    "shot_noise": _shot,
    "speckle_noise": _speckle,
    "salt_pepper": _salt_pepper,
    "defocus_blur": _defocus,
    "motion_blur": _motion,
    "gain": _gain,
    "contrast": _contrast,
    "gamma": _gamma,
    "jpeg": _jpeg,
    "illumination": _illumination,
    "fixed_pattern": _fixed_pattern,
    "bit_depth": _bit_depth,
}


def corrupt(views: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``views`` (``(C, H, W)`` or ``(H, W)`` uint16) under corruption ``name`` at ``severity``.

    Raises:
        ValueError: unknown corruption (the valid ones are listed), a severity outside 1-5, or
            views that are not uint16.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    x = np.asarray(views)
    if x.dtype != np.uint16:
        raise ValueError(f"views must be raw uint16 counts, got {x.dtype}")
    stacked = x[None] if x.ndim == 2 else x
    rng = np.random.default_rng([seed, SEVERITIES.index(severity), list(CORRUPTIONS).index(name)])
    out = CORRUPTIONS[name](stacked, float(LEVELS[name][severity - 1]), rng)
    return out[0] if x.ndim == 2 else out
