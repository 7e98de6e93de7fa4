"""Reading, normalising and writing layer images without losing bit depth.

Raw PBF layers are 16-bit. They are read as stored (``uint8`` or ``uint16``) and normalised in
float32 with percentiles (optionally after dividing by a smooth background) or min-max, never
through an 8-bit conversion that would clip every value above 255.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from pbf_core.errors import ImageReadError, LayerSetError

#: Default refusal limit for decoding (pixels). Real layers are 1-30 MP; this refuses
#: decompression bombs long before they allocate gigabytes.
DEFAULT_MAX_PIXELS = 64_000_000

#: Files larger than this are refused before being read (an uncompressed 64 MP 16-bit RGB TIFF
#: is 384 MiB).
MAX_FILE_BYTES = 512 * 1024**2

SUPPORTED_FORMATS = ("PNG", "TIFF", "JPEG", "BMP")
_SUPPORTED_DTYPES = (np.uint8, np.uint16)


def _check_header(
    data: bytes, source: str, max_pixels: int, max_aspect: float | None = None
) -> tuple[str, tuple[int, int]]:
    """Check the bytes can be an image of acceptable size without decoding the pixels."""
    if not data:
        raise ImageReadError(source, "empty file (0 bytes)")
    try:
        # Pillow's own bomb guard would raise on a different threshold; ours is explicit.
        with Image.open(io.BytesIO(data)) as im:
            fmt, size = im.format or "?", im.size
            if fmt == "PNG":
                im.verify()  # walks every chunk and checks CRCs: catches truncation and corruption
    except UnidentifiedImageError:
        raise ImageReadError(source, "not a recognised image format") from None
    except Image.DecompressionBombError:
        raise ImageReadError(source, f"too many pixels (limit {max_pixels:,})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(source, f"corrupt or truncated image ({exc})") from None
    if fmt not in SUPPORTED_FORMATS:
        raise ImageReadError(
            source, f"unsupported format {fmt} (use {', '.join(SUPPORTED_FORMATS)})"
        )
    w, h = size
    if w * h > max_pixels:
        raise ImageReadError(source, f"too many pixels: {w}x{h} = {w * h:,} > limit {max_pixels:,}")
    if w == 0 or h == 0:
        raise ImageReadError(source, f"zero-sized image {w}x{h}")
    if max_aspect is not None and max(w, h) > max_aspect * min(w, h):
        raise ImageReadError(
            source,
            f"{w}x{h} has an aspect ratio of {max(w, h) / min(w, h):,.0f}:1, over the limit "
            f"{max_aspect:g}:1 (not a layer image)",
        )
    return fmt, size


def decode_image(
    data: bytes,
    source: str = "<upload>",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = None,
) -> np.ndarray:
    """Decode encoded image bytes (e.g. an upload) exactly as stored.

    Args:
        data: the encoded file content (PNG, TIFF, JPEG or BMP; 8- or 16-bit; grey or colour).
        source: name used in error messages (a path or an upload's file name).
        max_pixels: refuse images with more pixels than this before decoding them.
        max_aspect: refuse images whose long side exceeds this many times the short one (a
            1x300,000 strip is no layer, and padding it to whole tiles costs gigabytes).

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array (colour in RGB(A) order), ``uint8`` or ``uint16``.

    Raises:
        ImageReadError: empty, unreadable, truncated, too large or of an unsupported bit depth
            (e.g. 32-bit float), naming the source and the reason.
    """
    fmt, (w, h) = _check_header(data, source, max_pixels, max_aspect)
    buf = np.frombuffer(data, dtype=np.uint8)
    if fmt == "JPEG" and b"\xff\xd9" not in data[-4096:]:
        raise ImageReadError(source, "truncated JPEG (no end-of-image marker)")
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(source, f"corrupt or truncated {fmt} data (decoder failed)")
    if arr.shape[:2] != (h, w):
        raise ImageReadError(
            source, f"decoded size {arr.shape[1]}x{arr.shape[0]} != header {w}x{h}"
        )
    if arr.dtype not in _SUPPORTED_DTYPES:
        raise ImageReadError(
            source, f"unsupported bit depth {arr.dtype} (need 8- or 16-bit integers)"
        )
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        elif arr.shape[2] == 3:
            arr = arr[:, :, ::-1]  # OpenCV decodes BGR
        elif arr.shape[2] == 4:
            arr = arr[:, :, [2, 1, 0, 3]]
    return np.ascontiguousarray(arr)


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file exactly as stored (see :func:`decode_image` for the result).

    Raises:
        ImageReadError: missing, not a file, empty, unreadable, truncated, too large or of an
            unsupported bit depth, naming the file and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ImageReadError(
            path, f"file too large ({path.stat().st_size:,} bytes > {MAX_FILE_BYTES:,})"
        )
    return decode_image(path.read_bytes(), str(path), max_pixels=max_pixels)


def to_gray(arr: np.ndarray) -> np.ndarray:
    """``(H, W[, C])`` image → ``(H, W)`` of the same dtype (alpha ignored, channel mean)."""
    if arr.ndim == 2:
        return arr
    if arr.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C), got shape {arr.shape}")
    rgb = arr[:, :, :3] if arr.shape[2] >= 3 else arr[:, :, :1]
    return rgb.mean(axis=2).round().astype(arr.dtype)


def full_scale(dtype: np.dtype) -> float:
    """Largest value of an unsigned integer image dtype (255 or 65535)."""
    return float(np.iinfo(dtype).max)


def repair_stuck_pixels(arr: np.ndarray) -> np.ndarray:
    """``arr`` with isolated pixels stuck at 0 or at full scale replaced by their 3×3 median.

    Hot and dead pixels, and salt-and-pepper noise, are lone pixels at the ends of the range;
    left alone they decide the stretch's percentiles and look like tiny defects. A pixel at an
    end with another at the same end beside it (a saturated spatter, a dark corner) is kept.
    ``arr`` is an ``(H, W)`` or ``(C, H, W)`` uint8/uint16 image; other dtypes and images
    without such pixels come back as they are (the same object).
    """
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3):
        return arr
    if arr.ndim == 3:
        pairs = [(v, repair_stuck_pixels(v)) for v in arr]
        return arr if all(r is v for v, r in pairs) else np.stack([r for _, r in pairs])
    lone = np.zeros(arr.shape, bool)
    for end in (0, np.iinfo(arr.dtype).max):
        at_end = (arr == end).astype(np.uint8)
        if at_end.any():
            lone |= (at_end == 1) & (cv2.boxFilter(at_end, -1, (3, 3), normalize=False) == 1)
    if not lone.any():
        return arr
    out = arr.copy()
    out[lone] = cv2.medianBlur(arr, 3)[lone]  # one median for both ends
    return out


#: Stretches that read their percentiles from the powder bed alone (:func:`bed_region`).
BED_STRETCHES = ("bed", "bed_flatfield")
#: Stretches that first divide each view by its smooth background (:func:`flat_field`).
FLAT_STRETCHES = ("flatfield", "bed_flatfield")


def normalize(
    arr: np.ndarray,
    method: Literal[
        "percentile", "bed", "flatfield", "bed_flatfield", "minmax", "fullscale"
    ] = "percentile",
    low: float = 0.5,
    high: float = 99.5,
    region: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """Map an integer image to float32 in [0, 1] without clipping the bit depth away.

    Args:
        arr: ``(H, W)`` or ``(C, H, W)`` ``uint8``/``uint16`` (or float) image.
        method: ``percentile`` stretches ``[p_low, p_high]`` to [0, 1] (robust to hot pixels),
            ``bed`` stretches between the percentiles of the powder bed alone
            (:func:`bed_region` of the image as stored: a machine frame around it is left out
            of the statistics; a ``(C, H, W)`` stack is stretched as a whole), ``flatfield``
            first divides the image by its smooth background (:func:`flat_field`: vignetting,
            light gradients) and then stretches the percentiles of that ratio,
            ``bed_flatfield`` does both (the ratio's percentiles over the bed alone),
            ``minmax`` stretches ``[min, max]``, ``fullscale`` divides by the dtype's maximum.
        low, high: percentiles for the percentile stretches.
        region: the bed of a 2-D image when already found (:func:`bed_region` of the image
            with its stuck pixels repaired); the bed stretches find it otherwise.

    Returns:
        float32 array of the same shape, values in [0, 1]. A constant image maps to zeros.
        Lone stuck pixels of an integer image are repaired first (:func:`repair_stuck_pixels`).
    """
    return _stretch(repair_stuck_pixels(arr), method, low, high, region)


def _stretch(
    arr: np.ndarray, method: str, low: float, high: float, region: tuple[slice, slice] | None
) -> np.ndarray:
    """:func:`normalize` of an image whose stuck pixels are already repaired."""
    x = arr.astype(np.float32)
    if method == "fullscale":
        scale = full_scale(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else 1.0
        return np.clip(x / scale, 0.0, 1.0)
    if method in ("percentile", *BED_STRETCHES, *FLAT_STRETCHES):
        if method not in BED_STRETCHES or arr.ndim != 2:
            region = None
        elif region is None:
            region = bed_region(arr)
        if method in FLAT_STRETCHES:
            x = flat_field(x, region=region)
        integer = arr.dtype in (np.uint8, np.uint16) and method not in FLAT_STRETCHES
        lo, hi = _stretch_limits(arr if integer else x, region, low, high)
    elif method == "minmax":
        lo, hi = float(x.min()), float(x.max())
    else:
        raise ValueError(
            f"unknown normalisation {method!r}: use percentile, bed, flatfield, bed_flatfield, "
            "minmax or fullscale"
        )
    if hi - lo <= 1e-6:
        return np.zeros_like(x)
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def _stretch_limits(
    values: np.ndarray, region: tuple[slice, slice] | None, low: float, high: float
) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of ``values`` (of its ``region`` alone if given).

    ``values`` is the stored uint8/uint16 image (read from its histogram) or float32.
    """
    if region is not None:
        values = np.ascontiguousarray(values[region])
    if values.dtype in (np.uint8, np.uint16) and values.size:
        lo, hi = integer_percentiles(values, (low, high))  # same values, no sort
    else:
        lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi)


#: :func:`bed_region` looks for the bed's edge in this fraction of each side, on blocks of
#: ``BED_BLOCK`` pixels, and counts a change of ``BED_STEP`` of the interior's level, or a
#: change of the blocks' texture by a factor ``BED_TEXTURE``, as an edge.
BED_SEARCH, BED_BLOCK, BED_STEP, BED_TEXTURE = 0.25, 8, 0.2, 2.0
#: Blocks either side of an edge that must differ as a whole (:func:`_inner_edge`).
BED_NEAR = 5
#: Smaller images are taken whole: parts and defects fill too much of their border band.
BED_MIN_SIDE = 256
#: Block side (px) on which :func:`_refine_cut` places an edge found on ``BED_BLOCK`` blocks.
BED_FINE = 2


def _inner_edge(profile: np.ndarray, step: float) -> int:
    """Index just inside the innermost edge of a border band in the first ``BED_SEARCH``.

    An edge is a change of more than ``step`` across two blocks that lasts: most of the
    ``BED_NEAR`` blocks outside it differ by as much from the median of as many inside it (a
    line through the bed changes one or two blocks), and so does the median of the band
    outside it from that of as wide a band inside it (a frame does, the stripes of recoater
    streaks, which go up and down around the powder's level, do not).
    """
    band = int(len(profile) * BED_SEARCH)
    steps = np.abs(profile[2 : band + 2] - profile[:band])
    for edge in np.flatnonzero(steps > step)[::-1]:
        near_in = float(np.median(profile[edge + 2 : edge + 2 + BED_NEAR]))
        near_out = profile[max(0, edge + 1 - BED_NEAR) : edge + 1]
        outer, inner = profile[: edge + 1], profile[edge + 2 : 2 * edge + 3]
        lasting = np.mean(np.abs(near_out - near_in) > step) > 0.5
        if lasting and abs(float(np.median(outer)) - float(np.median(inner))) > step:
            return int(edge) + 2
    return 0


def _block_profiles(x: np.ndarray, b: int = BED_BLOCK) -> tuple[np.ndarray, ...]:
    """Row and column profiles of ``BED_BLOCK`` blocks: level (over the interior's) and texture.

    Each profile is the median over the central half of the other axis, so parts and defects,
    which cover less than half of it, barely move it. Texture is the log of a block's standard
    deviation over its mean: a change of gain or vignetting leaves it alone.
    """
    h, w = x.shape
    x = np.asarray(x, np.float64)  # the variance below is a difference of large squares
    blocks = cv2.resize(x, (w // b, h // b), interpolation=cv2.INTER_AREA)
    squares = cv2.resize(x * x, (w // b, h // b), interpolation=cv2.INTER_AREA)
    spread = np.sqrt(np.maximum(squares - blocks * blocks, 0.0))
    texture = np.log(np.maximum(spread / np.maximum(blocks, 1e-6), 1e-4))
    bh, bw = blocks.shape
    level = max(float(np.median(blocks[bh // 4 : 3 * bh // 4, bw // 4 : 3 * bw // 4])), 1e-6)
    rows, cols = (slice(None), slice(bw // 4, 3 * bw // 4)), (slice(bh // 4, 3 * bh // 4),)
    return (
        np.median(blocks[rows], axis=1) / level,
        np.median(texture[rows], axis=1),
        np.median(blocks[cols], axis=0) / level,
        np.median(texture[cols], axis=0),
    )


def _border_cut(level: np.ndarray, texture: np.ndarray) -> int:
    """Blocks to cut from the start of a profile: the innermost level or texture edge."""
    return max(_inner_edge(level, BED_STEP), _inner_edge(texture, float(np.log(BED_TEXTURE))))


def _refine_cut(cut: int, level: np.ndarray, texture: np.ndarray) -> int:
    """``cut`` (px) moved out to just past the last ``BED_FINE`` block in the two
    ``BED_BLOCK`` blocks before it that still differs from the bed inside it.

    The edge search steps over two blocks, so ``cut`` may lie up to two blocks inside the bed;
    this gives them back (it never cuts more). ``level`` and ``texture`` are fine profiles.
    """
    if cut == 0:
        return 0
    f = BED_FINE
    start, stop = max(0, cut - 2 * BED_BLOCK) // f, cut // f
    inside = slice(stop, stop + BED_NEAR * BED_BLOCK // f)
    differs = (np.abs(level[start:stop] - np.median(level[inside])) > BED_STEP) | (
        np.abs(texture[start:stop] - np.median(texture[inside])) > np.log(BED_TEXTURE)
    )
    last = np.flatnonzero(differs)
    return (start + int(last[-1]) + 1) * f if last.size else cut  # no sign of it: keep the cut


def bed_region(x: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the powder bed in an ``(H, W)`` layer image.

    A machine frame, a recoater or a bar across the picture shows as a band along the border
    whose brightness steps away from the interior's by more than ``BED_STEP`` of its level, or
    whose texture (brushed or machined metal against powder grain) changes by more than a
    factor ``BED_TEXTURE``; the innermost such edge within ``BED_SEARCH`` of each border is cut
    off (:func:`_block_profiles`), placed to ``BED_FINE`` px (:func:`_refine_cut`). Images
    under ``BED_MIN_SIDE`` are taken whole. Vignetting and light gradients change the level by
    far less than that per block and the texture not at all, so an image without a frame keeps
    (nearly) all of itself.
    """
    h, w = x.shape
    if min(h, w) < BED_MIN_SIDE:
        return slice(0, h), slice(0, w)
    rows_l, rows_t, cols_l, cols_t = _block_profiles(x)
    cuts = [  # blocks to cut: top, bottom, left, right
        _border_cut(rows_l, rows_t),
        _border_cut(rows_l[::-1], rows_t[::-1]),
        _border_cut(cols_l, cols_t),
        _border_cut(cols_l[::-1], cols_t[::-1]),
    ]
    if any(cuts):  # the fine profiles only where an edge was found (most pictures have none)
        fine = _block_profiles(x, BED_FINE)
        profiles = [(fine[0], fine[1]), (fine[0][::-1], fine[1][::-1])]
        profiles += [(fine[2], fine[3]), (fine[2][::-1], fine[3][::-1])]
        cuts = [_refine_cut(c * BED_BLOCK, *p) for c, p in zip(cuts, profiles, strict=True)]
    top, bottom, left, right = cuts
    return slice(top, h - bottom), slice(left, w - right)


def bed_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """Row start, row stop, column start, column stop of the powder bed in every view.

    ``image`` is ``(H, W)`` or ``(C, H, W)`` as stored (before a stretch: its offset distorts
    the texture edge of :func:`bed_region`). The views of a layer share one camera, so the
    bed is where :func:`bed_region` of each view agrees (:func:`shared_box`); without a frame
    that is the whole picture.
    """
    views = image if image.ndim == 3 else image[None]
    return shared_box([bed_region(v) for v in views])


def shared_box(regions: Sequence[tuple[slice, slice]]) -> tuple[int, int, int, int]:
    """The box (row start, row stop, column start, column stop) where the views' bed regions
    (:func:`bed_region`) all agree: their intersection, empty when they do not overlap."""
    top, left = max(r.start for r, _ in regions), max(c.start for _, c in regions)
    bottom, right = min(r.stop for r, _ in regions), min(c.stop for _, c in regions)
    return top, max(top, bottom), left, max(left, right)  # views that disagree: an empty box


def box_mask(shape: tuple[int, int], box: Sequence[int]) -> np.ndarray:
    """``(H, W)`` bool: True inside ``box`` (row start, row stop, column start, column stop)."""
    mask = np.zeros(shape, bool)
    mask[box[0] : box[1], box[2] : box[3]] = True
    return mask


def bed_mask(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the powder bed of an image as stored (:func:`bed_box`)."""
    return box_mask(image.shape[-2:], bed_box(image))


def normalize_views(
    raw: np.ndarray,
    method: str = "percentile",
    low: float = 0.5,
    high: float = 99.5,
    *,
    find_bed: bool = True,
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Each view of a stored ``(C, H, W)`` stack stretched on its own (:func:`normalize`), and
    the bed box the views share (:func:`bed_box`): each view's bed region is found once, on
    the view with its stuck pixels repaired, for both.

    Returns:
        ``(image, box)``: ``(C, H, W)`` float32 in [0, 1]; the box, or None when not
        ``find_bed`` (the bed stretches still find each view's region for themselves).
    """
    views = [repair_stuck_pixels(v) for v in raw]
    if find_bed or method in BED_STRETCHES:
        regions = [bed_region(v) for v in views]
    else:
        regions = [None] * len(views)
    image = np.stack(
        [_stretch(v, method, low, high, r) for v, r in zip(views, regions, strict=True)]
    )
    return image, (shared_box(regions) if find_bed else None)


#: :func:`flat_field` estimates the background on this many cells along the longer side.
FLAT_FIELD_CELLS = 16


def flat_field(
    x: np.ndarray, cells: int = FLAT_FIELD_CELLS, region: tuple[slice, slice] | None = None
) -> np.ndarray:
    """``(H, W)`` float32 image (or a stack of them) over its smooth background (powder reads ~1).

    The background is the median of each pixel's 5 x 5 neighbourhood of coarse cells (about a
    third of the longer side across), upsampled. It follows vignetting and light gradients;
    pores, lines, spatter and parts, which cover less than half of that window, stay out of it,
    and so does a machine frame narrower than half of it (it keeps its own brightness against
    the bed's). The ratio does not change with the camera's gain.

    With a 2-D image's bed ``region`` (:func:`bed_region`) the background is estimated on the
    bed alone and carried out to the border by its edge values: a dark frame would otherwise
    pull the background down along the bed's edge and brighten the powder there.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        return np.stack([flat_field(v, cells) for v in x])
    if region is None:
        return x / _background(x, cells)
    rows, cols = region
    inner = _background(np.ascontiguousarray(x[rows, cols]), cells)
    h, w = x.shape
    pad = ((rows.start, h - rows.stop), (cols.start, w - cols.stop))
    return x / np.pad(inner, pad, mode="edge")


def _background(x: np.ndarray, cells: int) -> np.ndarray:
    """The smooth background :func:`flat_field` divides by, floored above 0."""
    h, w = x.shape
    step = max(1, round(max(h, w) / cells))
    small = cv2.resize(x, (max(1, w // step), max(1, h // step)), interpolation=cv2.INTER_AREA)
    small = cv2.medianBlur(small, 5) if min(small.shape) >= 3 else small
    background = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.maximum(background, np.float32(max(1e-3 * float(background.max()), 1e-6)))


def integer_percentiles(arr: np.ndarray, q: Sequence[float]) -> tuple[float, ...]:
    """``np.percentile(arr, q)`` (linear method) of a uint8/uint16 array from its histogram.

    Gives the same values as :func:`numpy.percentile` — the order statistics are read from the
    cumulative histogram and interpolated with NumPy's formula — in a fraction of the time (no
    sort or partition of the pixels): it is on the path of every served request.
    """
    cum = np.cumsum(np.bincount(arr.ravel()))
    n = int(cum[-1])
    out = []
    for frac in np.true_divide(np.asarray(q, dtype=np.float64), 100):
        virtual = frac * (n - 1)
        below = int(np.floor(virtual))
        above = min(below + 1, n - 1)
        # sorted[k] = the smallest value v with more than k pixels <= v
        a, b = (float(np.searchsorted(cum, k, side="right")) for k in (below, above))
        t = virtual - below
        diff = b - a
        out.append(b - diff * (1 - t) if t >= 0.5 else a + diff * t)
    return tuple(out)


def stack_layers(images: Mapping[str, np.ndarray], layer_id: str) -> np.ndarray:
    """Stack same-size ``(H, W)`` images (e.g. the a/b/c lighting angles) into ``(C, H, W)``.

    Raises:
        LayerSetError: when sizes differ, naming each view and its size.
    """
    if not images:
        raise LayerSetError(layer_id, "no images to stack")
    shapes = {name: img.shape[:2] for name, img in images.items()}
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{n}={s[1]}x{s[0]}" for n, s in shapes.items())
        raise LayerSetError(layer_id, f"image sizes differ ({detail})")
    return np.stack([to_gray(img) for img in images.values()], axis=0)


def _atomic_write(path: Path, ext: str, arr: np.ndarray) -> None:
    """Encode then rename into place, so a crash never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext, arr)
    if not ok:
        raise OSError(f"{path}: could not encode image of shape {arr.shape} {arr.dtype}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.tobytes())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png16(path: str | Path, image: np.ndarray) -> None:
    """Write a float image in [0, 1] as a 16-bit PNG.

    Args:
        image: ``(H, W)`` grey or ``(C, H, W)`` with C in {1, 3}: channel 0 is stored as red.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3:
        if x.shape[0] == 1:
            x = x[0]
        elif x.shape[0] == 3:
            x = x[::-1].transpose(1, 2, 0)  # (C,H,W) RGB -> (H,W,C) BGR for OpenCV
        else:
            raise ValueError(f"write_png16 takes 1 or 3 channels, got shape {image.shape}")
    u16 = np.round(np.clip(x, 0.0, 1.0) * 65535.0).astype(np.uint16)
    _atomic_write(Path(path), ".png", np.ascontiguousarray(u16))


def write_raw_png(path: str | Path, image: np.ndarray) -> None:
    """Write an integer ``(H, W)`` image (uint8 or uint16) as PNG, values unchanged."""
    if image.dtype not in _SUPPORTED_DTYPES or image.ndim != 2:
        raise ValueError(
            f"write_raw_png takes (H, W) uint8/uint16, got {image.shape} {image.dtype}"
        )
    _atomic_write(Path(path), ".png", np.ascontiguousarray(image))


def read_layer(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a prepared layer image as float32 ``(C, H, W)`` in [0, 1] (C = 1 or 3)."""
    arr = read_image(path, max_pixels=max_pixels)
    x = normalize(arr, method="fullscale")
    return x[None] if x.ndim == 2 else np.ascontiguousarray(x[:, :, :3].transpose(2, 0, 1))


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a boolean ``(H, W)`` mask as an 8-bit PNG with values 0 and 255."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    _atomic_write(Path(path), ".png", (m > 0).astype(np.uint8) * 255)


def read_mask(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a mask (any bit depth, grey, RGB or RGBA) as boolean ``(H, W)``: non-zero is foreground."""
    arr = read_image(path, max_pixels=max_pixels)
    if arr.ndim == 3:
        arr = arr[:, :, :3].max(axis=2)
    return arr > 0


def read_raw_labels(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an 8-bit ``(H, W)`` label map (e.g. defect type codes) as stored."""
    arr = read_image(path, max_pixels=max_pixels)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ImageReadError(path, f"label map must be 8-bit grey, got {arr.shape} {arr.dtype}")
    return arr


def jpeg_round_trip(views: np.ndarray, quality: int) -> np.ndarray:
    """Each ``(H, W)`` uint16 view of ``(C, H, W)`` through 8-bit JPEG at ``quality`` and back."""
    out = np.empty_like(views)
    for i, view in enumerate(views):
        eight = np.rint(view / 257.0).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", eight, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out[i] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257
    return out
