"""Pseudo-labels: what a model and the weak labels agree on in a user's unlabelled layers.

Each component the model predicts (``prob >= threshold``, the probability averaged over the
layer and its mirror images) is sorted by two votes: is it *confident* (it peaks above
``AdaptConfig.confident``) and is it *confirmed* (it touches the layer's weak label, whose
background method already asks the a/b/c views to agree)?

========================  ==========================================================
confident and confirmed   defect (a ring of ``AdaptConfig.ring`` px around it is left out)
only one of the two       left out of the loss: the two disagree
neither                   background: a hesitant prediction nothing else supports
========================  ==========================================================

Weak-label pixels the model does not predict are left out too (weak labels alone are too noisy
to teach new defects), and every other pixel is background.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pbf_core.config import AdaptConfig
from pbf_core.deploy.overlays import label_peaks


@dataclass(frozen=True)
class PseudoLabel:
    """A layer's training target: ``target`` defect pixels, ``ignore`` pixels out of the loss."""

    target: np.ndarray  # (H, W) bool
    ignore: np.ndarray  # (H, W) bool, never overlapping target
    counts: dict[str, int]  # components: defect, doubtful, background


def _ring(mask: np.ndarray, px: int) -> np.ndarray:
    if px < 1 or not mask.any():
        return np.zeros_like(mask)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask


def pseudo_label(
    prob: np.ndarray, weak: np.ndarray, threshold: float, cfg: AdaptConfig
) -> PseudoLabel:
    """Sort the predicted components of one layer into defect, doubtful and background.

    Args:
        prob: ``(H, W)`` float defect probabilities (see :func:`~pbf_core.deploy.tiling.mirror_average`).
        weak: ``(H, W)`` bool weak label of the layer.
        threshold: the model's decision threshold.
        cfg: ``confident`` peak and ``ring`` width.
    """
    n, labels = cv2.connectedComponents((prob >= threshold).astype(np.uint8), connectivity=8)
    peak = label_peaks(labels, prob, n)
    confirmed = np.zeros(n, bool)
    confirmed[np.unique(labels[weak])] = True
    confident = peak >= cfg.confident
    confirmed[0] = confident[0] = False  # label 0 is the background
    defect = (confident & confirmed)[labels]
    doubtful = (confident ^ confirmed)[labels] | (weak & ~defect) | _ring(defect, cfg.ring)
    counts = {
        "defect": int((confident & confirmed).sum()),
        "doubtful": int((confident ^ confirmed).sum()),
        "background": int((~confident & ~confirmed).sum()) - 1,  # minus label 0
    }
    return PseudoLabel(defect, doubtful & ~defect, counts)
