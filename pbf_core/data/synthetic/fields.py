"""Seeded random streams and the 2-D fields every stage draws on: pixel grid, smooth noise."""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from pbf_core.config import SynthConfig

# Random streams: each is seeded from (seed, stream, index...) so frames are independent.
_STREAM_PARTS = 1
_STREAM_FRAMES = 2
_STREAM_LAYER = 3
_STREAM_NOISE = 4
_STREAM_EFFECTS = 6  # styles.py uses 5 for the looks
_STREAM_VOLUMES = 7


def _rng(cfg: SynthConfig, *keys: int) -> np.random.Generator:
    # SeedSequence needs non-negative entropy; the sign word keeps seed -k distinct from k.
    return np.random.default_rng([int(cfg.seed < 0), abs(cfg.seed), *keys])


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)``, each ``(size, size)`` float32, read-only."""
    ax = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit standard deviation, float32."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma <= 0:
        return n
    b = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    # std of blurred unit white noise ≈ 1 / (2 σ √π) for σ ≳ 0.5
    return b * np.float32(2.0 * sigma * math.sqrt(math.pi))
