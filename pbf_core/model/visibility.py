"""Which labelled defects the views actually show: faint truth left out of the training loss.

A layer is lit from three angles so that a defect can be told from what one light makes: a
pore darkens, a droplet brightens the bed under every angle, while a part's glint or a grain's
shadow shows in one view only. A generator's truth (or a careful hand) also marks defects that
one view hardly shows: a droplet on a part that a specular light already drives to the top of
the stretch is as bright as the part there. Taught that such a spot is a defect while glints
are not, a network learns neither and ignores every bright spot on a part.

:func:`faint_components` finds those components, so that training leaves them out of the loss
(``TrainConfig.faint_contrast``) instead of teaching a contradiction. They still count when a
model is scored.
"""

from __future__ import annotations

import cv2
import numpy as np

#: The surroundings a component is compared with: this many pixels around it.
RING_PX = 3


def view_contrasts(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(K, C)`` float32: each component's mean minus its surroundings' median, per view.

    Args:
        image: ``(C, H, W)`` float32 normalised views.
        target: ``(H, W)`` bool labels; components are 8-connected, ``K`` of them in label
            order. The surroundings are the pixels within ``RING_PX`` that no label covers
            (NaN for a component that has none).
    """
    return _labelled_contrasts(image, target)[1]


def _labelled_contrasts(image: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The component labels of ``target`` and :func:`view_contrasts` of them."""
    target = np.asarray(target, bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        target.astype(np.uint8), connectivity=8
    )
    side = 2 * RING_PX + 1
    kernel = np.ones((side, side), np.uint8)
    h, w = target.shape
    out = np.full((count - 1, image.shape[0]), np.nan, dtype=np.float32)
    for k in range(1, count):
        x, y, bw, bh, _ = stats[k]
        ys = slice(max(0, y - RING_PX), min(h, y + bh + RING_PX))
        xs = slice(max(0, x - RING_PX), min(w, x + bw + RING_PX))
        own = labels[ys, xs] == k
        ring = cv2.dilate(own.astype(np.uint8), kernel).astype(bool) & ~target[ys, xs]
        if ring.any():
            window = image[:, ys, xs]
            out[k - 1] = window[:, own].mean(axis=1) - np.median(window[:, ring], axis=1)
    return labels, out


def faint_components(image: np.ndarray, target: np.ndarray, min_contrast: float) -> np.ndarray:
    """``(H, W)`` bool: the components of ``target`` that some view shows by less than
    ``min_contrast`` (in the defect's own sign, darker or brighter, on the normalised scale).

    The sign is that of the mean contrast over the views, so a droplet one view shows dark and
    the others bright counts by its weakest view. A component without surroundings is kept.
    """
    if min_contrast <= 0 or not target.any():
        return np.zeros(target.shape, bool)
    labels, contrast = _labelled_contrasts(image, target)
    seen = ~np.isnan(contrast).any(axis=1)  # NaN: no surroundings to compare with
    sign = np.sign(contrast[seen].mean(axis=1, keepdims=True))
    weakest = np.full(len(contrast), np.inf, dtype=np.float32)
    weakest[seen] = np.min(sign * contrast[seen], axis=1)
    faint = np.concatenate([[False], weakest < min_contrast])
    return faint[labels]
