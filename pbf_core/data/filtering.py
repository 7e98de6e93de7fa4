"""Read one raw layer set and decide whether it is a usable layer image.

A layer set is rejected with a :class:`FrameRejected` carrying one of :data:`REJECT_CODES` and a
human reason naming the file or view, so a run can skip it and report why.

The ``no_content`` check (no melted part visible) applies to a/b/c triplets only by default
(``FilterConfig.content_check``). Single-image sources are often after-recoat photos: am04's
annotated layers show fresh powder with at most faint ghosts of the parts, and its holes and
streaks are defects *of the powder*, so "no melted content" is no reason to drop them there.

True masks: the binary ``truth`` is the union of the defect masks, except am04's ``spattering``
instances. Those are drawn as coarse regions around a field of droplets, not as defect pixels, and
upstream's own union mask (``ImageN_Mask_00.png``) leaves them out too; counting them would make
pixel precision/recall measure how loosely regions were drawn. They stay in ``types`` (code 4) so
they can be evaluated separately.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from pbf_core.config import FilterConfig, PrepareConfig
from pbf_core.data.imaging import (
    full_scale,
    normalize_views,
    read_image,
    read_mask,
    read_raw_labels,
    stack_layers,
)
from pbf_core.data.layers import DEFECT_TYPES, TRIPLET_VIEWS, LayerRecord, defect_code
from pbf_core.errors import ImageReadError, LayerSetError, PbfError

RejectCode = Literal[
    "incomplete", "unreadable", "size_mismatch", "blank", "saturated", "no_content", "bad_mask"
]
REJECT_CODES: tuple[str, ...] = get_args(RejectCode)

#: Types kept out of the binary truth (see the module docstring).
REGION_TYPES: frozenset[str] = frozenset({"spattering"})

# The content check runs on at most this many pixels per side: parts are far larger than the
# resampling step, and it keeps a 30 MP layer at a few tens of milliseconds.
_CONTENT_MAX_SIDE = 512
_CONTENT_WINDOW = 5  # local statistics window (px, at the working resolution)
# The second pass needs enough powder left to estimate its statistics.
_MIN_POWDER_FRACTION = 0.2


class FrameRejected(PbfError):  # noqa: N818 (a verdict on a frame, not a program error)
    """A layer set is not usable; ``code`` is one of :data:`REJECT_CODES`, ``reason`` says why."""

    def __init__(self, layer_id: str, code: RejectCode, reason: str) -> None:
        self.layer_id = layer_id
        self.code = code
        self.reason = reason
        super().__init__(f"layer {layer_id}: {code}: {reason}")


@dataclass(frozen=True)
class LayerSet:
    """One usable layer in memory.

    Attributes:
        layer_id: id from the record.
        views: view names in channel order (``a``, ``b``, ``c`` or ``image``).
        raw: ``(C, H, W)`` ``uint8``/``uint16`` pixels as stored (colour reduced to grey).
        image: ``(C, H, W)`` float32 in [0, 1], each view normalised on its own (the lighting
            angles differ in overall brightness; per view, a threshold means the same in each).
        truth: ``(H, W)`` bool true defect mask, or None when the source has none.
        types: ``(H, W)`` uint8 defect type codes (0 = background, see ``DEFECT_TYPES``), or None.
        box: the powder bed every view shows (:func:`~pbf_core.data.imaging.bed_box`), found
            on the stored views with the stretch's own bed regions.
    """

    layer_id: str
    views: tuple[str, ...]
    raw: np.ndarray
    image: np.ndarray
    truth: np.ndarray | None
    types: np.ndarray | None
    box: tuple[int, int, int, int]


def load_layer_set(record: LayerRecord, cfg: PrepareConfig) -> LayerSet:
    """Read, check and normalise one layer set with its true mask.

    Args:
        record: the layer as listed by :func:`pbf_core.ingest.discover`.
        cfg: normalisation, pixel limit and filter settings.

    Returns:
        The usable layer set.

    Raises:
        FrameRejected: ``incomplete`` (a view missing), ``unreadable`` (missing, corrupt,
            truncated, too large or unsupported file), ``size_mismatch`` (views differ in size or
            bit depth), ``saturated``, ``blank``, ``no_content`` (see :func:`frame_problem`) or
            ``bad_mask`` (a true/instance/type mask unreadable or of another size).
    """
    lid = record.layer_id
    missing = [v for v, p in record.views.items() if p is None]
    if missing:
        noun = "view" if len(missing) == 1 else "views"
        raise FrameRejected(lid, "incomplete", f"missing {noun} {', '.join(missing)}")
    arrays: dict[str, np.ndarray] = {}
    for view, path in record.views.items():
        try:
            arrays[view] = read_image(path, max_pixels=cfg.max_pixels)
        except ImageReadError as exc:
            raise FrameRejected(lid, "unreadable", str(exc)) from None
    dtypes = {v: a.dtype.name for v, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        detail = ", ".join(f"{v}={d}" for v, d in dtypes.items())
        raise FrameRejected(lid, "size_mismatch", f"bit depths differ ({detail})")
    try:
        raw = stack_layers(arrays, lid)
    except LayerSetError as exc:
        raise FrameRejected(lid, "size_mismatch", exc.reason) from None
    views = tuple(arrays)
    problem = frame_problem(raw, cfg.filter, views=views)
    if problem is not None:
        raise FrameRejected(lid, *problem)
    truth, types = _read_truth(record, raw.shape[1:], cfg.max_pixels)
    lo, hi = cfg.percentiles
    image, box = normalize_views(raw, cfg.normalization, lo, hi)
    return LayerSet(lid, views, raw, image, truth, types, box)


def frame_problem(
    raw: np.ndarray, cfg: FilterConfig, *, views: Sequence[str] | None = None
) -> tuple[RejectCode, str] | None:
    """Why a raw stack is not a usable layer image, or None when it is.

    Checks, in order: ``saturated`` (any view has more than ``max_saturated_fraction`` of its
    pixels at the top code), ``blank`` (any view's p99 - p1 is below ``min_dynamic_range`` of full
    scale: one dead view already breaks a triplet), ``no_content`` (no view shows
    ``min_part_fraction`` of melted part; see :func:`part_fraction`; applied per
    ``cfg.content_check``). Full scale is the dtype's maximum (255 or 65535): 12-bit data stored
    in the low bits of 16-bit files needs a lower ``min_dynamic_range``.

    Args:
        raw: ``(C, H, W)`` or ``(H, W)`` ``uint8``/``uint16`` pixels as stored.
        cfg: thresholds.
        views: channel names for the reason; ``a, b, c`` marks a triplet (default: a triplet
            when C is 3).

    Returns:
        ``(code, reason)`` or None.
    """
    stack = raw[None] if raw.ndim == 2 else raw
    if views is None:
        views = TRIPLET_VIEWS if len(stack) == len(TRIPLET_VIEWS) else ("image",) * len(stack)
    for name, view in zip(views, stack, strict=True):
        scale = int(full_scale(view.dtype))
        top = (view == scale).mean()
        if top > cfg.max_saturated_fraction:
            return "saturated", (
                f"view {name}: {top:.1%} of pixels at the top code {scale} "
                f"(limit {cfg.max_saturated_fraction:.1%})"
            )
        p1, p99 = np.percentile(view, [1, 99])
        spread = (p99 - p1) / scale
        if spread < cfg.min_dynamic_range:
            return "blank", (
                f"view {name}: p99 - p1 = {spread:.2%} of full scale {scale} "
                f"(minimum {cfg.min_dynamic_range:.2%})"
            )
    check = cfg.content_check == "always" or (
        cfg.content_check == "triplets" and tuple(views) == TRIPLET_VIEWS
    )
    if check:
        best = max(part_fraction(view, cfg) for view in stack)
        if best < cfg.min_part_fraction:
            return "no_content", (
                f"melted-part area {best:.3%} in the best view (minimum "
                f"{cfg.min_part_fraction:.3%}): a powder- or recoater-only frame"
            )
    return None


def part_fraction(view: np.ndarray, cfg: FilterConfig) -> float:
    """Fraction of a frame covered by melted part cross-sections.

    After exposure, melted parts differ from powder in brightness (they reflect the light
    specularly) and in texture (hatch lines); the powder bed is a fine, statistically uniform
    texture under smooth illumination, crossed by recoater streaks and, between exposures, by the
    recoater blade itself. So:

    1. remove illumination gradients and full-length streaks with row and column medians of the
       powder: a streak or the blade runs across the whole bed, a part covers a minority of a row;
    2. in robust units of the powder (median absolute deviation), mark pixels whose local mean
       deviates by more than ``part_contrast`` sigmas of the powder's local means, or whose local
       standard deviation exceeds ``part_texture`` times the powder's;
    3. drop isolated pixels (3x3 opening), then repeat once with the marked pixels (and a margin)
       left out of the powder statistics, so that large parts do not bias the row medians.

    Limitation: a part wider than about half the bed along both a row and a column is partly
    absorbed by the medians; its hatch texture still counts.

    Args:
        view: ``(H, W)`` integer or float frame.
        cfg: ``part_contrast`` and ``part_texture``.

    Returns:
        Fraction in [0, 1].
    """
    x = view.astype(np.float32)
    h, w = x.shape
    if max(h, w) > _CONTENT_MAX_SIDE:
        s = _CONTENT_MAX_SIDE / max(h, w)
        x = cv2.resize(x, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    part = _mark_parts(x, np.ones(x.shape, dtype=bool), cfg)
    margin = np.ones((_CONTENT_WINDOW, _CONTENT_WINDOW), np.uint8)
    powder = ~cv2.dilate(part.astype(np.uint8), margin).astype(bool)
    if powder.mean() > _MIN_POWDER_FRACTION:
        part = _mark_parts(x, powder, cfg)
    return float(part.mean())


def _mark_parts(x: np.ndarray, powder: np.ndarray, cfg: FilterConfig) -> np.ndarray:
    """Boolean part mask of float frame ``x``, with statistics taken over ``powder`` pixels."""
    r = x - _masked_median(x, powder, axis=1)
    r -= _masked_median(r, powder, axis=0)
    z = r / (_mad(r[powder]) + 1e-6)
    k = (_CONTENT_WINDOW, _CONTENT_WINDOW)
    mean = cv2.blur(z, k)
    std = np.sqrt(np.maximum(cv2.blur(z * z, k) - mean * mean, 0.0))
    ref = mean[powder]
    deviation = np.abs(mean - np.median(ref))
    part = (deviation > cfg.part_contrast * (_mad(ref) + 1e-6)) | (
        std > cfg.part_texture * np.median(std[powder])
    )
    opened = cv2.morphologyEx(part.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return opened.astype(bool)


def _masked_median(x: np.ndarray, keep: np.ndarray, axis: int) -> np.ndarray:
    """Median along ``axis`` over ``keep`` pixels (0 where none is kept), keeping dims."""
    if keep.all():
        return np.median(x, axis=axis, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-masked rows: handled as 0 below
        med = np.nanmedian(np.where(keep, x, np.nan), axis=axis, keepdims=True)
    return np.nan_to_num(med)


def _mad(x: np.ndarray) -> float:
    """Robust standard deviation (1.4826 x median absolute deviation)."""
    return 1.4826 * float(np.median(np.abs(x - np.median(x))))


def _read_truth(
    record: LayerRecord, shape: tuple[int, int], max_pixels: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """True mask and type codes of a record, checked against the image ``(H, W)``."""
    lid = record.layer_id
    truth = types = None
    if record.truth is not None:
        truth = _read_checked(lid, record.truth, shape, max_pixels, read_mask)
        # Synthetic builds keep type codes beside the truth: truth/B0001.png -> types/B0001.png.
        types_path = record.truth.parent.parent / "types" / f"{record.truth.stem}.png"
        if types_path.is_file():
            types = _read_checked(lid, types_path, shape, max_pixels, read_raw_labels)
            if int(types.max()) > len(DEFECT_TYPES):
                raise FrameRejected(
                    lid,
                    "bad_mask",
                    f"{types_path}: type code {int(types.max())} outside 0..{len(DEFECT_TYPES)}",
                )
    elif record.instances:
        truth = np.zeros(shape, dtype=bool)
        types = np.zeros(shape, dtype=np.uint8)
        for kind, path in record.instances:
            mask = _read_checked(lid, path, shape, max_pixels, read_mask)
            try:
                types[mask] = defect_code(kind)  # later instances overwrite earlier ones
            except ValueError as exc:
                raise FrameRejected(lid, "bad_mask", f"{path}: {exc}") from None
            if kind not in REGION_TYPES:
                truth |= mask
    elif record.no_defects:
        truth = np.zeros(shape, dtype=bool)
        types = np.zeros(shape, dtype=np.uint8)
    return truth, types


def _read_checked(
    lid: str,
    path: Path,
    shape: tuple[int, int],
    max_pixels: int,
    reader: Callable[..., np.ndarray],
) -> np.ndarray:
    try:
        arr = reader(path, max_pixels=max_pixels)
    except ImageReadError as exc:
        raise FrameRejected(lid, "bad_mask", str(exc)) from None
    if arr.shape != tuple(shape):
        raise FrameRejected(
            lid,
            "bad_mask",
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]}, image is {shape[1]}x{shape[0]}",
        )
    return arr
