"""Spatter droplets added to training patches, so that a network sees enough of them on parts.

A droplet of spatter brightens the bed under every light. On a melted part, the specular glints
of the scan tracks make spots of the same size and brightness, but each in one view only. A
layer holds hundreds of glints and a handful of droplets, so a network trained on the layers
alone learns that a bright spot on a part is a glint and never marks a droplet there (on the
2026-12-07 champion, 0 of 29 on held-out parts while it found 12 of 14 on powder).

:func:`add_droplets` puts a cluster of droplets into a patch as the generator paints spatter:
each view is pulled towards a level at or above the top of the stretch, by the same amount in
every view, and the droplets join the target. They land on the patch's brighter pixels (parts,
mostly) where a view has room to brighten, so none is invisible.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Droplets per cluster, cluster spread (px) and droplet radius before rounding (px).
DROPLETS, SPREAD_PX, RADIUS_PX = (3, 9), (2.0, 6.0), (0.3, 1.6)
#: How far each view moves towards the droplet's level, and that level (1 = top of the stretch).
ALPHA, LEVEL = (0.4, 0.8), (1.0, 1.3)
#: Centres are drawn among the pixels with room at least this bright (their quantile, in the
#: faintest view).
BRIGHT_QUANTILE = 0.9
#: ... and at least this bright (a melted part sits above the powder on the stretched scale).
BRIGHT_FLOOR = 0.5
#: A droplet pixel needs every view below this, so that it shows in all of them.
ROOM = 0.9


def add_droplets(
    image: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A cluster of spatter droplets on the brighter part of a patch.

    Args:
        image: ``(C, h, w)`` float32 normalised views (not modified).
        target: ``(h, w)`` uint8 label code; bit 0 is the defect target (bit 1, ignored pixels,
            is left alone, and no droplet lands on a labelled or ignored pixel).
        rng: the patch's random stream.

    Returns:
        ``(image, target)``: new arrays with the droplets painted and labelled; the inputs
        unchanged when the patch has no pixel with room to brighten.
    """
    faintest = image.min(axis=0)
    room = (image.max(axis=0) < ROOM) & (target == 0)
    if not room.any():
        return image, target
    floor = max(float(np.quantile(faintest[room], BRIGHT_QUANTILE)), BRIGHT_FLOOR)
    candidates = np.flatnonzero(room & (faintest >= floor))
    if not candidates.size:
        return image, target
    drops = _cluster(rng, image.shape[1:], int(candidates[rng.integers(candidates.size)]))
    own = drops & room
    if not own.any():
        return image, target
    alpha, level = float(rng.uniform(*ALPHA)), float(rng.uniform(*LEVEL))
    image = image.copy()
    image[:, own] += (np.float32(level) - image[:, own]) * np.float32(alpha)
    np.clip(image, 0.0, 1.0, out=image)
    target = target.copy()
    target[own] |= 1
    return image, target


def _cluster(rng: np.random.Generator, shape: tuple[int, int], centre: int) -> np.ndarray:
    """``(h, w)`` bool: a few small round droplets, one on the flat index ``centre`` and the
    others scattered around it."""
    h, w = shape
    cy, cx = divmod(centre, w)
    spread = float(rng.uniform(*SPREAD_PX))
    canvas = np.zeros((h, w), np.uint8)
    for k in range(int(rng.integers(*DROPLETS))):
        dy, dx = rng.normal(0.0, spread, size=2) if k else (0.0, 0.0)  # one on the centre
        radius = round(float(rng.uniform(*RADIUS_PX)))
        cv2.circle(canvas, (cx + round(float(dx)), cy + round(float(dy))), radius, 1, -1)
    return canvas.astype(bool)
