"""Weak defect labels from classical computer vision, and their quality against true masks.

Three methods turn a normalised layer image into a binary weak label:

- ``threshold``: the prototype's rule, kept as the baseline. A pixel is a defect when it is darker
  than a fixed intensity in at least ``min_votes`` lighting angles; a 3×3 opening then closing and
  a minimum blob area clean the result.
- ``background``: each view is compared with its local background and the difference is scaled
  by the local robust spread (median absolute deviation). Pixels far below (holes, spreading
  lines, recoater streaks) *or* far above (incandescence, spatter) their surroundings are
  defects. The background is two estimates that must both be exceeded: a median filter, and an
  opening (bright) or closing (dark) by reconstruction with a disk, which keeps any structure
  the disk fits into, such as a part with sharp corners. A true defect changes the bed under
  every lighting angle while a shadow or a glint depends on the angle, so enough views must
  agree (a single view must pass higher thresholds instead); the local spread rejects hatch
  texture; a maximum blob area rejects large regions. Windows scale with the image size.
- ``adaptive``: the background method, with thresholds each image sets from its own statistics:
  a texture every view sees alike (coarse bright powder grain) passes the fixed thresholds in
  enough views to be labelled, but it also lifts the image's own score distribution, so every
  threshold rises with that distribution's 99th percentile (see
  :class:`~pbf_core.config.AdaptiveLabelConfig`). Under independent noise it labels what
  ``background`` labels.

Parameters were tuned on synthetic builds (see :class:`~pbf_core.config.BackgroundLabelConfig`);
``benchmarks/label_quality.py`` measures both methods on a synthetic build and on real layers.

Label quality (:func:`~pbf_core.evaluation.metrics.instance_counts`, :func:`~pbf_core.evaluation.metrics.instance_metrics`) counts pixels and connected
components (8-connectivity) per layer, then micro-averages over a data set.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from pbf_core.config import BackgroundLabelConfig, LabelConfig, ThresholdLabelConfig

#: MAD → standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
_SQUARE3 = np.ones((3, 3), np.uint8)
#: Resolution of the 8-bit spread map (normalised units); spreads above 255 steps saturate,
#: which only makes very textured regions (already hard to label) a little more sensitive.
_SPREAD_STEP = 1.0 / 1024.0


def _check_image(image: np.ndarray) -> np.ndarray:
    """Validate a ``(C, H, W)`` float image in [0, 1]; return it as float32."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or 0 in image.shape:
        raise ValueError(
            f"image must be (C, H, W) with C = 1 (single view) or 3 (a/b/c), got shape {image.shape}"
        )
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image must be float in [0, 1], got dtype {image.dtype} "
            "(normalise raw layers with imaging.normalize first)"
        )
    lo, hi = float(image.min()), float(image.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("image contains NaN or infinite values")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"image values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return image.astype(np.float32, copy=False)


def _filter_components(mask: np.ndarray, min_area: int, max_area: int | None = None) -> np.ndarray:
    """Keep 8-connected blobs with ``min_area <= area`` (and ``area <= max_area`` if given)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    area = stats[:, cv2.CC_STAT_AREA]
    keep = area >= min_area
    if max_area is not None:
        keep &= area <= max_area
    keep[0] = False  # label 0 is the background
    return keep[labels]


def _drop_rings(mask: np.ndarray, max_hole_fraction: float) -> np.ndarray:
    """Remove blobs enclosing holes larger than ``max_hole_fraction`` of their own area.

    A thin ring-shaped part is narrower than the structuring disk, so it stands out like a
    bright defect; defects do not enclose bed. Background is 4-connected where blobs are
    8-connected, so every hole belongs to exactly one enclosing blob.
    """
    _, bg = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    outside = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
    holes = ~mask & ~np.isin(bg, outside)
    if not holes.any():
        return mask
    n, labels = cv2.connectedComponents((mask | holes).astype(np.uint8), connectivity=8)
    hole_area = np.bincount(labels[holes], minlength=n)
    blob_area = np.bincount(labels[mask], minlength=n)
    ring = hole_area > max_hole_fraction * blob_area
    ring[0] = False
    return mask & ~ring[labels]


def _grow(seeds: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Hysteresis: the 8-connected blobs of ``candidates`` that contain at least one seed."""
    n, labels = cv2.connectedComponents(candidates.astype(np.uint8), connectivity=8)
    hit = np.zeros(n, dtype=bool)
    hit[np.unique(labels[seeds & candidates])] = True
    hit[0] = False
    return hit[labels]


def threshold_labels(image: np.ndarray, cfg: ThresholdLabelConfig) -> np.ndarray:
    """The prototype's rule: dark in enough views, opened, closed, small blobs removed.

    Args:
        image: ``(C, H, W)`` float in [0, 1], one channel per lighting angle (C = 1 or 3).
        cfg: intensity threshold, votes (clamped to C), structuring element size, minimum area.

    Returns:
        ``(H, W)`` bool weak label.

    Raises:
        ValueError: the image is not ``(C, H, W)`` float in [0, 1].
    """
    x = _check_image(image)
    votes = (x < cfg.threshold).sum(axis=0)
    mask = (votes >= min(cfg.min_votes, x.shape[0])).astype(np.uint8)
    kernel = np.ones((cfg.kernel, cfg.kernel), np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return _filter_components(mask, cfg.min_area)


def _reconstruct(marker: np.ndarray, mask: np.ndarray, steps: int, bright: bool) -> np.ndarray:
    """Grey-level reconstruction of ``mask`` from ``marker`` (by dilation if ``bright``).

    An opening cuts up to about the structuring radius into a structure it keeps (corners,
    convex edges); ``steps`` geodesic 3×3 steps restore those cuts, so only structures the disk
    never fitted into stay removed. Stops early when nothing changes.
    """
    grow, clamp = (cv2.dilate, np.minimum) if bright else (cv2.erode, np.maximum)
    for step in range(steps):
        nxt = clamp(grow(marker, _SQUARE3), mask)
        if step % 8 == 7 and np.array_equal(nxt, marker):
            return nxt
        marker = nxt
    return marker


def _scaled_windows(cfg: BackgroundLabelConfig, shape: tuple[int, ...]) -> tuple[int, int]:
    """Median window (odd) and disk radius for an image of ``shape``, in px.

    Parts and defects span a fixed share of a layer that shows the whole plate, so windows tuned
    on ``reference_size`` layers scale with the shorter side.
    """
    if cfg.reference_size is None:
        return cfg.background_kernel, cfg.structure_radius
    f = min(shape[-2:]) / cfg.reference_size
    return max(3, round(cfg.background_kernel * f) | 1), max(1, round(cfg.structure_radius * f))


def _deviation(
    view: np.ndarray, cfg: BackgroundLabelConfig, polarities: tuple[int, ...]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per polarity (+1 bright, -1 dark): contrast above/below the background and its z-score.

    Two background estimates must both be exceeded: the median (robust to the defect itself,
    but it rounds off part corners and convex edges) and the opening (bright) or closing
    (dark) by reconstruction with a disk of ``structure_radius`` (exact on any structure the
    disk fits into, such as a part, however it is shaped). The z-score divides by the local
    robust spread, so hatch texture scores low where powder noise would score high.

    OpenCV's median filter takes large windows only on 8-bit input; 1/255 steps are far below
    any defect contrast and only the background estimates are quantised, not the image.
    """
    k, r = _scaled_windows(cfg, view.shape)
    median = cv2.medianBlur(np.round(view * 255.0).astype(np.uint8), k)
    residual = view - median.astype(np.float32) / 255.0
    # Finer steps than the background's: powder noise deviates by a few thousandths only.
    deviation = np.rint(np.minimum(np.abs(residual) / _SPREAD_STEP, 255.0)).astype(np.uint8)
    # Near a texture boundary (powder beside a hatched part) the window median sees mostly the
    # calm side; the max over a window carries the textured side's spread up to its boundary.
    spread = cv2.dilate(cv2.medianBlur(deviation, k), np.ones((k, k), np.uint8))
    local = spread.astype(np.float32) * (_MAD_TO_SIGMA * _SPREAD_STEP)
    # A floor keeps flat, noise-free regions from turning quantisation steps into z-scores.
    scale = np.maximum(local, max(cfg.min_spread, float(np.median(local))))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    out = {}
    for sign in polarities:
        op = cv2.MORPH_OPEN if sign > 0 else cv2.MORPH_CLOSE
        structure = _reconstruct(cv2.morphologyEx(view, op, disk), view, 3 * r, sign > 0)
        contrast = np.minimum(sign * residual, sign * (view - structure))
        out[sign] = (contrast, contrast / scale)
    return out


def _view_scores(
    view: np.ndarray, cfg: BackgroundLabelConfig, sigma: dict[int, float]
) -> dict[int, np.ndarray]:
    """Per polarity: how many times over a pixel of one view passes both seed thresholds.

    A score above 1 means ``z > sigma`` and ``contrast > min_contrast``; the bright polarity
    keeps the better of the plain pass and the pass after the texture median.
    """
    passes = [(view, tuple(sigma))]
    if 1 in sigma and cfg.texture_kernel > 1:
        passes.append((cv2.medianBlur(view, cfg.texture_kernel), (1,)))
    out: dict[int, np.ndarray] = {}
    for img, signs in passes:
        for s, (contrast, z) in _deviation(img, cfg, signs).items():
            score = z / sigma[s]
            if cfg.min_contrast > 0:
                score = np.minimum(score, contrast / cfg.min_contrast)
            out[s] = score if s not in out else np.maximum(out[s], score)
    return out


def _agreed(scores: list[np.ndarray], need: int) -> np.ndarray:
    """The ``need``-th highest score over the views: above t iff ``need`` views pass t."""
    if len(scores) == 1:
        return scores[0]
    stack = np.stack(scores)
    return np.partition(stack, len(scores) - need, axis=0)[len(scores) - need]


def _adaptation(agreed: np.ndarray, cfg: BackgroundLabelConfig) -> float:
    """How much this image raises its thresholds: 1, or more where its own tail is heavy.

    Under independent noise the agreed score's ``tail_quantile`` stays near a fixed value; a
    texture every view sees alike (coarse bright powder grain) lifts the whole tail, and the
    thresholds rise with it instead of labelling the grain.
    """
    if not cfg.tail_quantile:
        return 1.0
    sample = agreed[::2, ::2].ravel()
    k = int(cfg.tail_quantile * (sample.size - 1))
    return max(1.0, cfg.tail_gain * float(np.partition(sample, k)[k]))


def background_labels(image: np.ndarray, cfg: BackgroundLabelConfig) -> np.ndarray:
    """Local-background deviation, dark and bright, agreeing across views.

    Per view and polarity, a pixel's contrast is how far it lies beyond two background
    estimates (a ``background_kernel`` median, and an opening/closing by reconstruction with a
    ``structure_radius`` disk), and its z-score is that contrast over the local robust spread
    (median absolute deviation in the same window). A pixel seeds a dark defect when
    ``z > dark_sigma`` and contrast > ``min_contrast`` in at least ``min_votes`` views (clamped
    to C), a bright one likewise with ``bright_sigma``; bright seeds are also sought after a
    ``texture_kernel`` median, which hides hatch texture around a bright blob on a part. Seeds
    grow into neighbours that pass ``grow_fraction`` of the thresholds (hysteresis). Blobs
    outside ``[min_area, max_area_fraction · H · W]`` px are dropped, and so are blobs that
    enclose holes above ``max_hole_fraction`` of their area (ring-shaped part outlines).

    Args:
        image: ``(C, H, W)`` float in [0, 1], one channel per lighting angle (C = 1 or 3).
        cfg: the method's parameters.

    Returns:
        ``(H, W)`` bool weak label.

    Raises:
        ValueError: the image is not ``(C, H, W)`` float in [0, 1].
    """
    x = _check_image(image)
    c, h, w = x.shape
    need = min(cfg.min_votes, c)
    g = cfg.grow_fraction
    # Agreement between views suppresses noise; a lone view must be more certain instead.
    boost = cfg.single_view_sigma_boost if need == 1 else 0.0
    sigma = {-1: cfg.dark_sigma + boost, 1: cfg.bright_sigma + boost}
    polarities = (-1, 1) if cfg.detect_bright else (-1,)
    per_view = [_view_scores(view, cfg, {s: sigma[s] for s in polarities}) for view in x]
    mask = np.zeros((h, w), bool)
    for s in polarities:
        agreed = _agreed([v[s] for v in per_view], need)
        a = _adaptation(agreed, cfg)
        mask |= _grow(agreed > a, agreed > g * a)
    max_area = max(cfg.min_area, int(cfg.max_area_fraction * h * w))
    return _drop_rings(_filter_components(mask, cfg.min_area, max_area), cfg.max_hole_fraction)


#: Method name (``LabelConfig.method``) → labelling function.
METHODS: dict[str, Callable[[np.ndarray, object], np.ndarray]] = {
    "threshold": threshold_labels,
    "background": background_labels,
    "adaptive": background_labels,  # with AdaptiveLabelConfig's per-image thresholds
}


def synthesize_labels(
    image: np.ndarray, cfg: LabelConfig, bed: np.ndarray | None = None
) -> np.ndarray:
    """Weak label of one layer with the method ``cfg.method`` and its parameters.

    Args:
        image: ``(C, H, W)`` float in [0, 1] (C = 3 for a/b/c triplets, 1 for single images).
        cfg: method name and per-method parameters; with ``bed_only`` the label keeps to ``bed``.
        bed: ``(H, W)`` bool powder bed, :func:`~pbf_core.data.imaging.bed_mask` of the views as
            stored (before the stretch: its offset would distort the texture edge); None: the
            whole picture.

    Returns:
        ``(H, W)`` bool weak label.

    Raises:
        ValueError: unknown method (the valid ones are listed) or a bad image.
    """
    try:
        method = METHODS[cfg.method]
    except KeyError:
        raise ValueError(
            f"unknown label method {cfg.method!r}; valid: {', '.join(METHODS)}"
        ) from None
    mask = method(image, getattr(cfg, cfg.method))
    return mask & bed if cfg.bed_only and bed is not None else mask
