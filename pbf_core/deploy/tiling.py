"""Whole layers at native resolution from a model that sees tiles.

A layer is never resized: it is cut into overlapping ``tile_size`` tiles (from the model's
:class:`~pbf_core.model.spec.ModelSpec`), each tile's probabilities are weighted by a Hann window
(tile borders, where the network sees least context, count least) and the weighted sum is divided
by the summed weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pbf_core.model.spec import OUTPUT_STRIDE, ModelSpec

#: ``(N, C, h, w) float32`` normalised tiles → ``(N, h, w) float32`` defect probabilities.
PredictFn = Callable[[np.ndarray], np.ndarray]


def mirror_average(
    predict_proba: Callable[[np.ndarray], np.ndarray], image: np.ndarray, flips: bool = True
) -> np.ndarray:
    """``(H, W)`` probabilities of a ``(C, H, W)`` layer, averaged with those of its left-right
    and up-down mirror images when ``flips`` (each mapped back): noise-driven specks rarely
    survive three predictions, a defect does.

    Args:
        predict_proba: ``(C, H, W)`` float32 → ``(H, W)`` probabilities.
    """
    prob = predict_proba(image)
    if not flips:
        return prob
    lr = predict_proba(np.ascontiguousarray(image[:, :, ::-1]))[:, ::-1]
    ud = predict_proba(np.ascontiguousarray(image[:, ::-1, :]))[::-1, :]
    return ((prob + lr + ud) / np.float32(3.0)).astype(np.float32, copy=False)


def predict_layer(
    predict: PredictFn, image: np.ndarray, spec: ModelSpec, batch_size: int = 4
) -> np.ndarray:
    """:func:`predict_tiled` with the spec's tiles, mirror-averaged when ``spec.flips``."""

    def tiled(x: np.ndarray) -> np.ndarray:
        return predict_tiled(predict, x, spec.tile_size, spec.tile_overlap, batch_size)

    return mirror_average(tiled, image, spec.flips)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering ``[0, length)``, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_window(tile: int) -> np.ndarray:
    """``(tile, tile)`` float32 Hann window, strictly positive so every pixel gets weight."""
    w = np.hanning(tile + 2)[1:-1].astype(np.float32)
    return np.outer(w, w)


def predict_tiled(
    predict: PredictFn,
    image: np.ndarray,
    tile: int,
    overlap: int,
    batch_size: int = 4,
) -> np.ndarray:
    """Probability map of a whole layer from overlapping tiles at native resolution.

    Args:
        predict: batch of tiles → probabilities (see :data:`PredictFn`).
        image: ``(C, H, W)`` float32 normalised layer (any H, W; smaller layers are padded by
            reflection to one tile).
        tile: tile side (px), a multiple of 32.
        overlap: overlap between neighbouring tiles (px), below ``tile / 2``.
        batch_size: tiles per ``predict`` call.

    Returns:
        ``(H, W)`` float32 probabilities in [0, 1].
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    if tile % OUTPUT_STRIDE or not 0 <= overlap < tile // 2:
        raise ValueError(f"bad tiling: tile {tile} (multiple of 32), overlap {overlap} < tile/2")
    _, h, w = image.shape
    ph, pw = max(h, tile), max(w, tile)
    x = image
    if (ph, pw) != (h, w):
        # Reflection keeps the texture statistics at the border; zeros would look like a hole.
        mode = "reflect" if h > 1 and w > 1 else "edge"
        x = np.pad(image, ((0, 0), (0, ph - h), (0, pw - w)), mode=mode)
    stride = tile - overlap
    origins = [(y, xx) for y in _starts(ph, tile, stride) for xx in _starts(pw, tile, stride)]
    weight = tile_window(tile) if len(origins) > 1 else np.ones((tile, tile), np.float32)
    acc = np.zeros((ph, pw), np.float32)
    norm = np.zeros((ph, pw), np.float32)
    for i in range(0, len(origins), batch_size):
        chunk = origins[i : i + batch_size]
        batch = np.stack([x[:, y : y + tile, xx : xx + tile] for y, xx in chunk])
        probs = predict(batch.astype(np.float32, copy=False))
        for (y, xx), p in zip(chunk, probs, strict=True):
            acc[y : y + tile, xx : xx + tile] += p * weight
            norm[y : y + tile, xx : xx + tile] += weight
    return (acc / norm)[:h, :w]
