"""Synthetic PBF builds: the offline default data set, with true defect masks.

A build is a stack of layer images of the same build plate in the Kaggle "Process Monitoring in
Additive Manufacturing" layout::

    OUT/
      manifest.json          generator, version, config, one entry per frame (layer or noise)
      images/B0001a.PNG      16-bit grey, the layer under lighting angle a (b and c likewise)
      truth/B0001.png        true defect mask, 8-bit 0/255 (real layers only)
      types/B0001.png        per-pixel defect type code (``datasets.defect_code``; 0 = none)

What a layer shows, and why:

- **Powder** at about 18 000-30 000 counts: grain texture and clumps from fresh powder each layer, a
  micro-relief that each lighting angle shades differently, a fixed illumination gradient and
  vignetting per angle.
- **Parts** that stay on the plate for the whole build and slowly change their cross-section. Melted
  metal is brighter and more specular than powder, shows the hatch (scan track) texture, whose angle
  rotates by :data:`HATCH_ROTATION_DEG` per layer as real machines do, and a bright contour track.
  Parts stand slightly proud of the powder, so each angle lights one edge and shadows the other.
  Specular glints differ between angles.
- **Defects** with the sizes found in hand-annotated real layers (median instance ≈0.005-0.05 % of
  the image): lack-of-fusion holes, horizontal spreading lines, vertical recoater streaks (dark under
  every angle) and incandescence and spatter (bright under every angle). Most sit on or near parts.
  The truth mask is exactly the set of painted pixels.
- **Sensor noise** (read + shot noise), so the values use all 16 bits.
- **Noise frames** between the layers, which a filter must drop: ``incomplete`` (view c missing),
  ``blank`` (near-black), ``saturated`` (over-exposed, large clipped areas) and ``recoater`` (fresh
  powder only, no melted content, with the recoater blade crossing). They have no truth files.

Every frame is a pure function of ``(cfg, frame index)``: the same seed gives byte-identical files,
and frames could be rendered in parallel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from pbf_core.config import SynthConfig
from pbf_core.data.imaging import write_mask, write_raw_png
from pbf_core.data.layers import DEFECT_TYPES, TRIPLET_VIEWS, defect_code
from pbf_core.errors import DatasetError
from pbf_core.files import write_json

GENERATOR = "pbf-synth"
GENERATOR_VERSION = 1

#: Frames that are not usable layer images; a filter must drop them.
NOISE_KINDS: tuple[str, ...] = ("incomplete", "blank", "saturated", "recoater")

#: Scan-vector rotation between consecutive layers (degrees), the common choice of PBF machines.
HATCH_ROTATION_DEG = 67.0

#: Lighting azimuth of views a, b, c (degrees, image x axis = 0, y pointing down).
VIEW_AZIMUTH_DEG: tuple[float, ...] = (0.0, 120.0, 240.0)

#: Mean powder level (16-bit counts) at the plate centre.
POWDER_LEVEL = 24_000.0
#: Melted metal reflects this much more than powder (before hatch texture and glints).
PART_GAIN = 1.65

_FULL_SCALE = 65_535.0
_RELIEF_SHADING = 0.16  # shading change per unit slope of the height field
_PART_HEIGHT = 1.6  # how far parts stand above the powder, in height-field units (~px)
_SHADOW_DEPTH = 0.35  # fraction of light lost in a part's shadow

#: How often each defect type occurs (hole, horizontal, incandescence, spattering, vertical).
_TYPE_PROB = {
    "hole": 0.35,
    "horizontal": 0.15,
    "incandescence": 0.25,
    "spattering": 0.15,
    "vertical": 0.10,
}
#: Dark defects keep this fraction of the light (same in every view): holes are deepest, spreading
#: lines and recoater streaks shallower, as in the am04 annotations (which measure 0.86-0.95 inside
#: their generous hand-drawn outlines).
_DARK_FACTOR = {"hole": (0.4, 0.7), "horizontal": (0.62, 0.8), "vertical": (0.7, 0.85)}
#: Bright defects move every view this far towards full scale.
_BRIGHT_ALPHA = {"incandescence": (0.3, 0.65), "spattering": (0.4, 0.75)}
_ON_PART_PROB = 0.8  # most defects form where the laser melts
_MAX_DEFECT_FRACTION = 0.02  # no single defect covers more of the image (largest real one ≈2 %)

# Random streams: each is seeded from (seed, stream, index...) so frames are independent.
_STREAM_PARTS = 1
_STREAM_FRAMES = 2
_STREAM_LAYER = 3
_STREAM_NOISE = 4

_FRAME_FILE = re.compile(r"^B\d{4,}(?:[abc]\.PNG|\.png)$")


@dataclass(frozen=True)
class PartSpec:
    """One part on the build plate, in pixels; its cross-section breathes with the layer index.

    Attributes:
        shape: ``rect``, ``ellipse``, ``ring`` or ``polygon``.
        cx, cy: centre (px).
        radius: half-size at scale 1 (px).
        aspect: height/width ratio at scale 1.
        rotation: in-plane rotation (rad).
        inner: inner radius of a ring as a fraction of the outer one.
        sides: number of polygon sides.
        amplitude, period, phase: cross-section scale = 1 + amplitude·sin(2π z / period + phase).
    """

    shape: str
    cx: float
    cy: float
    radius: float
    aspect: float
    rotation: float
    inner: float
    sides: int
    amplitude: float
    period: float
    phase: float


@dataclass(frozen=True)
class FrameSpec:
    """One frame of the build: its id, what it is and the layer height index ``z`` it belongs to."""

    frame_id: str
    kind: str  # "layer" or one of NOISE_KINDS
    z: int
    index: int  # position in the build (0-based)


@dataclass(frozen=True)
class Defect:
    """A painted defect instance; ``bbox`` = ``[x0, y0, x1, y1]`` with x1, y1 exclusive (px)."""

    type: str
    bbox: tuple[int, int, int, int]
    area: int
    on_part: bool

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "bbox": list(self.bbox),
            "area": self.area,
            "on_part": self.on_part,
        }


@dataclass(frozen=True)
class RenderedLayer:
    """A rendered layer.

    Attributes:
        views: ``(3, H, W)`` uint16, the layer under lighting angles a, b, c.
        truth: ``(H, W)`` bool, true defect pixels.
        types: ``(H, W)`` uint8 defect type codes (0 = none); ``types > 0`` equals ``truth``.
        part_mask: ``(H, W)`` bool, melted cross-section of this layer.
        hatch_angle_deg: direction of the scan tracks in [0, 180) degrees.
        defects: the painted instances.
    """

    views: np.ndarray
    truth: np.ndarray
    types: np.ndarray
    part_mask: np.ndarray
    hatch_angle_deg: float
    defects: tuple[Defect, ...]


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


def _light_dirs() -> np.ndarray:
    """``(3, 2)`` unit vectors (x, y) pointing from the plate towards each view's light."""
    az = np.deg2rad(np.asarray(VIEW_AZIMUTH_DEG, dtype=np.float64))
    return np.stack([np.cos(az), np.sin(az)], axis=1).astype(np.float32)


@lru_cache(maxsize=4)
def _illumination(size: int) -> np.ndarray:
    """``(3, H, W)`` float32 relative irradiance per view: side-light gradient and vignetting."""
    yy, xx = _grid(size)
    c = (size - 1) / 2.0
    u, v = (xx - c) / size, (yy - c) / size
    r2 = u * u + v * v
    camera = 1.0 + 0.05 * v - 0.35 * r2  # shared: lens vignetting, slight tilt of the plate
    out = np.empty((3, size, size), dtype=np.float32)
    for i, (lx, ly) in enumerate(_light_dirs()):
        out[i] = camera * (1.0 + 0.22 * (u * lx + v * ly))  # brighter towards each lamp
    out.setflags(write=False)
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit standard deviation, float32."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma <= 0:
        return n
    b = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    # std of blurred unit white noise ≈ 1 / (2 σ √π) for σ ≳ 0.5
    return b * np.float32(2.0 * sigma * math.sqrt(math.pi))


def plan_parts(cfg: SynthConfig) -> tuple[PartSpec, ...]:
    """Place ``cfg.parts`` non-overlapping parts on the plate (deterministic per seed)."""
    rng = _rng(cfg, _STREAM_PARTS)
    n = cfg.size
    # Smaller parts when there are many, so they fit: total melted area ≈ 3-8 % of the plate.
    r_hi = min(0.09, 0.22 / math.sqrt(cfg.parts))
    parts: list[PartSpec] = []
    for _ in range(cfg.parts):
        # Rejection sampling; on a crowded plate the last try is kept and parts merge.
        for _ in range(200):
            radius = float(rng.uniform(0.55, 1.0)) * r_hi * n
            reach = radius * 1.45  # bounding circle incl. aspect, breathing and shadows
            margin = reach + 0.04 * n
            cx, cy = (float(v) for v in rng.uniform(margin, n - margin, size=2))
            if all(math.hypot(cx - p.cx, cy - p.cy) > reach + p.radius * 1.45 for p in parts):
                break
        shape = str(rng.choice(["rect", "ellipse", "ring", "polygon"]))
        parts.append(
            PartSpec(
                shape=shape,
                cx=cx,
                cy=cy,
                radius=radius,
                aspect=float(rng.uniform(0.55, 1.0)),
                rotation=float(rng.uniform(0, math.pi)),
                inner=float(rng.uniform(0.4, 0.65)),
                sides=int(rng.integers(3, 7)),
                amplitude=float(rng.uniform(0.05, 0.2)),
                period=float(rng.uniform(40, 200)),
                phase=float(rng.uniform(0, 2 * math.pi)),
            )
        )
    return tuple(parts)


def _hatch_base(cfg: SynthConfig) -> float:
    return float(_rng(cfg, _STREAM_PARTS, 1).uniform(0, 180))


def hatch_angle(cfg: SynthConfig, z: int) -> float:
    """Scan-track direction of layer ``z`` in degrees, [0, 180)."""
    return (_hatch_base(cfg) + HATCH_ROTATION_DEG * z) % 180.0


def part_mask(cfg: SynthConfig, z: int, parts: tuple[PartSpec, ...] | None = None) -> np.ndarray:
    """Melted cross-section of layer ``z``: ``(size, size)`` bool."""
    parts = plan_parts(cfg) if parts is None else parts
    yy, xx = _grid(cfg.size)
    mask = np.zeros((cfg.size, cfg.size), dtype=bool)
    for p in parts:
        scale = 1.0 + p.amplitude * math.sin(2 * math.pi * z / p.period + p.phase)
        a = p.radius * scale
        b = a * p.aspect * (1.0 + 0.1 * math.sin(2 * math.pi * z / (1.7 * p.period)))
        reach = math.ceil(max(a, b) * 1.05) + 2
        y0, y1 = max(0, int(p.cy) - reach), min(cfg.size, int(p.cy) + reach + 1)
        x0, x1 = max(0, int(p.cx) - reach), min(cfg.size, int(p.cx) + reach + 1)
        dx, dy = xx[y0:y1, x0:x1] - p.cx, yy[y0:y1, x0:x1] - p.cy
        c, s = math.cos(p.rotation), math.sin(p.rotation)
        u, v = c * dx + s * dy, -s * dx + c * dy
        if p.shape == "rect":
            inside = np.maximum(np.abs(u) / a, np.abs(v) / b) <= 1.0
        elif p.shape == "ellipse":
            inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        elif p.shape == "ring":
            rho = (u / a) ** 2 + (v / a) ** 2  # rings stay round, like turned parts
            inside = (rho <= 1.0) & (rho >= p.inner**2)
        else:
            apothem = a * math.cos(math.pi / p.sides)
            inside = np.ones(u.shape, dtype=bool)
            for k in range(p.sides):
                ang = 2 * math.pi * k / p.sides
                inside &= u * math.cos(ang) + v * math.sin(ang) <= apothem
        mask[y0:y1, x0:x1] |= inside
    return mask


# --------------------------------------------------------------------------- defects


def _blob(rng: np.random.Generator, area: float) -> np.ndarray:
    """Irregular filled blob of about ``area`` px: an ellipse with a ragged outline, bool patch."""
    r = math.sqrt(area / math.pi)
    asp = float(rng.uniform(1.0, 2.2))
    a, b = r * math.sqrt(asp), r / math.sqrt(asp)
    half = math.ceil(a) + 2
    ax = np.arange(-half, half + 1, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    th = float(rng.uniform(0, math.pi))
    u = math.cos(th) * xx + math.sin(th) * yy
    v = -math.sin(th) * xx + math.cos(th) * yy
    ragged = 0.25 * _smooth_noise(rng, yy.shape, max(0.6, r / 3))
    patch = (u / max(a, 0.5)) ** 2 + (v / max(b, 0.5)) ** 2 + ragged <= 1.0
    if not patch.any():
        patch[half, half] = True
    return patch


def _line(rng: np.random.Generator, length: int, width: int, vertical: bool) -> np.ndarray:
    """Thin slightly wavy line patch (bool), horizontal unless ``vertical``."""
    length = max(length, 2)
    pad = width + 2
    t = np.arange(length, dtype=np.float32)
    wave = 0.6 * np.sin(2 * math.pi * t / float(rng.uniform(20, 60)) + float(rng.uniform(0, 6.3)))
    across = np.arange(2 * pad + 1, dtype=np.float32)[:, None] - pad
    patch = np.abs(across - wave[None, :]) < width / 2.0 + 0.01
    patch[pad, :] = True  # never let the wave break a 1-px line
    return patch.T if vertical else patch


def _spatter(rng: np.random.Generator, size: int, max_area: float) -> np.ndarray:
    """Cluster of small round droplets ejected from the melt pool, bool patch."""
    spread = float(rng.uniform(3, 10)) * max(size / 512, 0.4)
    half = math.ceil(3 * spread) + 3
    patch = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.uint8)
    k = int(rng.integers(3, 13))
    r_scale = max(size / 512, 0.5)
    for _ in range(k):
        dy, dx = np.clip(rng.normal(0, spread, size=2), -half + 2, half - 2)
        r = max(0, round(float(rng.uniform(0.3, 1.6)) * r_scale))
        cv2.circle(patch, (half + round(float(dx)), half + round(float(dy))), r, 1, -1)
        if patch.sum() >= max_area:
            break
    return patch.astype(bool)


def _defect_patch(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Shape of one defect (bool patch); sizes follow the am04 hand annotations (area of image)."""
    img_area = float(n * n)
    if kind == "hole":  # real: median 0.005 %, p90 0.02 %, max 0.15 %
        area = float(np.clip(rng.lognormal(math.log(5e-5 * img_area), 1.0), 4, 1.5e-3 * img_area))
        return _blob(rng, area)
    if kind == "incandescence":  # real: median 0.05 %, p90 0.24 %, max 0.66 %
        area = float(np.clip(rng.lognormal(math.log(4.5e-4 * img_area), 1.1), 4, 6e-3 * img_area))
        return _blob(rng, area)
    if kind == "horizontal":  # real: median 0.04 %, max 0.12 %, thin lines
        width = 1 if n < 384 else int(rng.integers(1, 3))
        area = float(rng.uniform(1.5e-4, 1.1e-3)) * img_area
        return _line(rng, max(6, round(area / width)), width, vertical=False)
    if kind == "vertical":  # real: 0.3-0.7 %, long recoater-direction streaks
        width = 1 if n < 256 else int(rng.integers(2, 5))
        return _line(rng, round(float(rng.uniform(0.4, 0.9)) * n), width, vertical=True)
    if kind == "spattering":
        return _spatter(rng, n, max(6.0, 6e-4 * img_area))
    raise ValueError(f"unknown defect type {kind!r}; valid: {', '.join(DEFECT_TYPES)}")


def _paint_defects(
    rng: np.random.Generator, cfg: SynthConfig, value: np.ndarray, part: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[Defect, ...]]:
    """Paint defects into ``value`` (``(3, H, W)`` float32, in place), identically in every view.

    Dark defects scale the light by the same per-pixel factor in all views, bright ones pull all
    views towards the same near-saturated level, so a defect keeps its sign under every angle.
    """
    n = cfg.size
    types = np.zeros((n, n), dtype=np.uint8)
    defects: list[Defect] = []
    count = int(rng.poisson(cfg.defects_per_layer))
    if count == 0:
        return types > 0, types, ()
    kinds = list(_TYPE_PROB)
    probs = np.asarray(list(_TYPE_PROB.values()))
    near_part = cv2.dilate(part.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    part_idx = np.flatnonzero(near_part)
    for _ in range(count):
        kind = str(rng.choice(kinds, p=probs))
        patch = _defect_patch(rng, kind, n)
        ph, pw = patch.shape
        if kind == "vertical":  # the recoater drags across the whole plate
            cy, cx = (int(v) for v in rng.integers(0, n, size=2))
        elif part_idx.size and rng.random() < _ON_PART_PROB:
            cy, cx = divmod(int(part_idx[rng.integers(part_idx.size)]), n)
        else:
            cy, cx = (int(v) for v in rng.integers(0, n, size=2))
        y0, x0 = cy - ph // 2, cx - pw // 2
        py0, px0 = max(0, -y0), max(0, -x0)
        y0c, x0c = max(0, y0), max(0, x0)
        y1c, x1c = min(n, y0 + ph), min(n, x0 + pw)
        if y1c <= y0c or x1c <= x0c:
            continue
        own = patch[py0 : py0 + (y1c - y0c), px0 : px0 + (x1c - x0c)].copy()
        region = types[y0c:y1c, x0c:x1c]
        own &= region == 0  # instances never share pixels, so areas and types stay exact
        area = int(own.sum())
        if area == 0 or area > _MAX_DEFECT_FRACTION * n * n:
            continue
        sub = value[:, y0c:y1c, x0c:x1c]
        jitter = rng.standard_normal(area).astype(np.float32)
        if kind in ("hole", "horizontal", "vertical"):
            lo, hi = _DARK_FACTOR[kind]
            factor = np.clip(float(rng.uniform(lo, hi)) * (1 + 0.05 * jitter), 0.05, 0.9)
            sub[:, own] *= factor[None, :]
        else:
            lo, hi = _BRIGHT_ALPHA[kind]
            alpha = np.clip(float(rng.uniform(lo, hi)) * (1 + 0.05 * jitter), 0.1, 1.0)
            target = np.float32(0.98 * _FULL_SCALE)
            sub[:, own] += (target - sub[:, own]) * alpha[None, :]
        region[own] = defect_code(kind)
        ys, xs = np.nonzero(own)
        bbox = (
            int(xs.min()) + x0c,
            int(ys.min()) + y0c,
            int(xs.max()) + x0c + 1,
            int(ys.max()) + y0c + 1,
        )
        on_part = bool(part[y0c:y1c, x0c:x1c][own].mean() >= 0.5)
        defects.append(Defect(kind, bbox, area, on_part))
    return types > 0, types, tuple(defects)


# --------------------------------------------------------------------------- rendering


def _powder(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh powder: ``(albedo, height)`` float32 ``(n, n)`` from grains and clumps."""
    grains = _smooth_noise(rng, (n, n), 0.7)
    clumps = _smooth_noise(rng, (n, n), max(2.0, n / 128))
    albedo = 1.0 + 0.012 * grains + 0.012 * clumps
    height = 0.2 * grains + 0.5 * clumps
    return albedo, height


def _shade(albedo: np.ndarray, height: np.ndarray, raised: np.ndarray | None, n: int) -> np.ndarray:
    """Light ``albedo`` under the three views: illumination × relief shading × part shadows.

    Args:
        albedo: ``(3, n, n)`` or ``(n, n)`` reflectance (1 = average powder).
        height: ``(n, n)`` height field (px-like units); its slope shades each view differently.
        raised: ``(n, n)`` float32 part coverage in [0, 1] that casts shadows, or None.

    Returns:
        ``(3, n, n)`` float32 expected counts before sensor noise.
    """
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    illum = _illumination(n)
    shadow_len = max(1.5, n / 170)
    out = np.empty((3, n, n), dtype=np.float32)
    for i, (lx, ly) in enumerate(_light_dirs()):
        # Slopes facing the lamp catch more light (Lambert, low elevation, linearised).
        shade = np.clip(1.0 + _RELIEF_SHADING * (gx * lx + gy * ly), 0.3, 1.7)
        lit = (albedo[i] if albedo.ndim == 3 else albedo) * illum[i] * shade
        if raised is not None:
            # A raised part hides the lamp from the powder just beyond its far edge.
            shift = np.float32([[1, 0, shadow_len * lx], [0, 1, shadow_len * ly]])
            caster = cv2.warpAffine(
                raised,
                shift,
                (n, n),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT,
            )
            lit *= 1.0 - _SHADOW_DEPTH * np.clip(caster - raised, 0.0, 1.0)
        out[i] = lit
    return out * np.float32(POWDER_LEVEL)


def _sensor(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    """Add read and shot noise to expected counts and quantise: ``(3, H, W)`` uint16."""
    sigma = np.sqrt(np.float32(110.0**2) + np.float32(4.0) * np.maximum(expected, 0))
    noisy = expected + sigma * rng.standard_normal(expected.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), 0, _FULL_SCALE).astype(np.uint16)


def _layer_expected(
    cfg: SynthConfig, z: int, rng: np.random.Generator, parts: tuple[PartSpec, ...]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Noise-free ``(3, n, n)`` float32 counts of layer ``z``, its part mask and hatch angle."""
    n = cfg.size
    part = part_mask(cfg, z, parts)
    angle = hatch_angle(cfg, z)
    powder_alb, powder_h = _powder(rng, n)
    partf = part.astype(np.float32)
    cover = cv2.GaussianBlur(partf, (0, 0), 0.6)  # anti-aliased part edge
    raised = cv2.GaussianBlur(partf, (0, 0), 1.2)

    yy, xx = _grid(n)
    period = max(4.0, n / 110)  # hatch spacing (px)
    th = math.radians(angle)
    # Tracks run along `angle`; the texture varies across them.
    phase = (-math.sin(th) * xx + math.cos(th) * yy) * np.float32(2 * math.pi / period)
    ripple = np.sin(phase + np.float32(rng.uniform(0, 2 * math.pi)))
    ripple *= 1.0 + 0.25 * _smooth_noise(rng, (n, n), 3.0)  # uneven melt tracks

    height = powder_h * (1.0 - cover) + _PART_HEIGHT * raised + 0.9 * ripple * cover

    # Melted metal: brighter, textured along the tracks, brightest where the track direction is
    # perpendicular to the light (specular lobe), plus the contour track and a few glints.
    contour = part & ~cv2.erode(part.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    metal = PART_GAIN * (1.0 + 0.07 * ripple + 0.04 * _smooth_noise(rng, (n, n), 0.6))
    metal += 0.25 * contour
    albedo = np.empty((3, n, n), dtype=np.float32)
    part_idx = np.flatnonzero(part)
    for i, az in enumerate(VIEW_AZIMUTH_DEG):
        spec = 0.18 * math.sin(math.radians(angle - az)) ** 2
        view_metal = metal + spec
        if part_idx.size:
            glints = np.zeros(n * n, dtype=np.float32)
            k = max(1, part_idx.size // 600)
            glints[part_idx[rng.integers(part_idx.size, size=k)]] = 0.8
            view_metal += cv2.GaussianBlur(glints.reshape(n, n), (0, 0), 0.7) * 4.0
        albedo[i] = powder_alb * (1.0 - cover) + view_metal * cover
    return _shade(albedo, height, raised, n), part, angle


def render_layer(cfg: SynthConfig, z: int, variant: int = 0) -> RenderedLayer:
    """Render layer ``z`` of the build: a pure function of ``(cfg, z, variant)``.

    Args:
        cfg: the build configuration.
        z: layer height index, 0-based; sets the part cross-sections and hatch angle.
        variant: 0 for the build's real layer; other values re-render the same layer with fresh
            powder, defects and noise (used for noise frames that copy a layer).

    Returns:
        The three views, the true defect mask and type map, the part mask and the defects.
    """
    if z < 0:
        raise ValueError(f"layer index z must be >= 0, got {z}")
    rng = _rng(cfg, _STREAM_LAYER, z, variant)
    expected, part, angle = _layer_expected(cfg, z, rng, plan_parts(cfg))
    truth, types, defects = _paint_defects(rng, cfg, expected, part)
    return RenderedLayer(_sensor(rng, expected), truth, types, part, angle, defects)


def _recoater_expected(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Freshly spread powder, no melted content, the recoater blade crossing as a dark band."""
    n = cfg.size
    albedo, height = _powder(rng, n)
    # The blade runs along x (recoater streaks are vertical): a dull metal bar with a thin
    # highlight on its edge and a soft shadow on the powder in front of it.
    bar = max(3, round(n * float(rng.uniform(0.04, 0.07))))
    y0 = int(rng.integers(0, n - bar))
    yy = np.arange(n, dtype=np.float32)[:, None]
    body = (yy >= y0) & (yy < y0 + bar)
    brushed = 0.45 + 0.05 * np.sin(yy * 2.1) + 0.02 * _smooth_noise(rng, (n, n), 1.0)
    albedo = np.where(body, brushed, albedo).astype(np.float32)
    albedo[min(n - 1, y0 + bar - 1)] *= 1.5
    shadow_rows = np.clip((yy - (y0 + bar)) / max(2.0, bar * 0.6), 0, 1)
    albedo *= np.where(yy >= y0 + bar, 0.7 + 0.3 * shadow_rows, 1.0).astype(np.float32)
    height = np.where(body, np.float32(0), height).astype(np.float32)
    return _shade(albedo, height, None, n)


def render_frame(
    cfg: SynthConfig, spec: FrameSpec
) -> tuple[dict[str, np.ndarray], RenderedLayer | None]:
    """Render one frame of the build plan.

    Returns:
        ``(views, layer)``: view name → ``(H, W)`` uint16 image (an ``incomplete`` frame lacks
        ``c``), and the :class:`RenderedLayer` for real layers (None for noise frames).
    """
    if spec.kind == "layer":
        layer = render_layer(cfg, spec.z)
        return dict(zip(TRIPLET_VIEWS, layer.views, strict=True)), layer
    rng = _rng(cfg, _STREAM_NOISE, spec.index)
    n = cfg.size
    if spec.kind == "incomplete":  # the camera dropped the last exposure of a layer
        views = render_layer(cfg, spec.z, variant=1 + spec.index).views
        return {"a": views[0], "b": views[1]}, None
    if spec.kind == "blank":  # lights off or shutter closed: dark level plus read noise
        dark = np.float32(rng.uniform(250, 700)) * _illumination(n)
        noisy = dark + 40.0 * rng.standard_normal(dark.shape, dtype=np.float32)
        views = np.clip(np.rint(noisy), 0, _FULL_SCALE).astype(np.uint16)
    elif spec.kind == "saturated":  # over-exposed: most of the plate clips at full scale
        expected, _, _ = _layer_expected(cfg, spec.z, rng, plan_parts(cfg))
        views = _sensor(rng, expected * np.float32(rng.uniform(2.8, 3.6)))
    elif spec.kind == "recoater":
        views = _sensor(rng, _recoater_expected(cfg, rng))
    else:
        raise ValueError(
            f"unknown frame kind {spec.kind!r}; valid: layer, {', '.join(NOISE_KINDS)}"
        )
    return dict(zip(TRIPLET_VIEWS, views, strict=True)), None


def plan_frames(cfg: SynthConfig) -> tuple[FrameSpec, ...]:
    """Order of frames in the build: ``cfg.layers`` real layers with noise frames interleaved.

    About ``cfg.noise_frames × cfg.layers`` noise frames are added; with 8 or more layers and a
    non-zero rate there is at least one of each kind in :data:`NOISE_KINDS`.
    """
    rng = _rng(cfg, _STREAM_FRAMES)
    n_noise = round(cfg.noise_frames * cfg.layers)
    if cfg.noise_frames > 0 and cfg.layers >= 8:
        n_noise = max(n_noise, len(NOISE_KINDS))
    kinds = [NOISE_KINDS[i % len(NOISE_KINDS)] for i in range(n_noise)]
    rng.shuffle(kinds)
    total = cfg.layers + n_noise
    noise_at = set(rng.choice(total, size=n_noise, replace=False).tolist()) if n_noise else set()
    width = max(4, len(str(total)))
    frames: list[FrameSpec] = []
    z = 0
    noise_iter = iter(kinds)
    for i in range(total):
        frame_id = f"B{i + 1:0{width}d}"
        if i in noise_at:
            frames.append(FrameSpec(frame_id, next(noise_iter), min(z, cfg.layers - 1), i))
        else:
            frames.append(FrameSpec(frame_id, "layer", z, i))
            z += 1
    return tuple(frames)


# --------------------------------------------------------------------------- writing


def _frame_files(spec: FrameSpec) -> list[str]:
    views = ("a", "b") if spec.kind == "incomplete" else TRIPLET_VIEWS
    files = [f"images/{spec.frame_id}{v}.PNG" for v in views]
    if spec.kind == "layer":
        files += [f"truth/{spec.frame_id}.png", f"types/{spec.frame_id}.png"]
    return files


def _own_files(out: Path) -> list[Path]:
    """Files in ``out`` that a synthetic build writes; raises if anything else is there."""
    if out.exists() and not out.is_dir():
        raise DatasetError(out, "output path exists and is not a directory")
    if not out.exists():
        return []
    own: list[Path] = []
    for entry in sorted(out.iterdir()):
        if entry.name == "manifest.json" and entry.is_file():
            continue
        if entry.name in ("images", "truth", "types") and entry.is_dir():
            for f in sorted(entry.iterdir()):
                if not (f.is_file() and _FRAME_FILE.match(f.name)):
                    raise DatasetError(f, "not a synthetic-build file; refusing to mix builds")
                own.append(f)
            continue
        raise DatasetError(entry, "output directory holds files that are not a synthetic build")
    return own


def generate_build(
    out: str | Path,
    cfg: SynthConfig,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write a synthetic build to ``out`` (layout in the module docstring).

    ``out`` may be missing, empty or a previous synthetic build: the previous build's files that
    this one does not rewrite are removed, so the directory always holds exactly one build.

    Args:
        out: output directory.
        cfg: build size, seed, parts, defect rate and noise-frame rate.
        progress: called as ``progress(done, total)`` after each frame.

    Returns:
        The manifest dict, also written to ``out/manifest.json``: generator, version, config,
        image size, views, defect types and one entry per frame in id order, real layers as
        ``{"id", "kind": "layer", "z", "hatch_angle_deg", "part_fraction", "defects": [{"type",
        "bbox": [x0, y0, x1, y1] (x1, y1 exclusive), "area" (px), "on_part"}]}`` and noise frames
        as ``{"id", "kind", "z"}`` with kind in :data:`NOISE_KINDS`.

    Raises:
        DatasetError: ``out`` is a file, or a directory holding anything but a synthetic build.
    """
    out = Path(out)
    previous = _own_files(out)
    frames = plan_frames(cfg)
    written: set[Path] = set()
    entries: list[dict] = []
    for i, spec in enumerate(frames):
        views, layer = render_frame(cfg, spec)
        for v, img in views.items():
            write_raw_png(out / "images" / f"{spec.frame_id}{v}.PNG", img)
        entry: dict = {"id": spec.frame_id, "kind": spec.kind, "z": spec.z}
        if layer is not None:
            write_mask(out / "truth" / f"{spec.frame_id}.png", layer.truth)
            write_raw_png(out / "types" / f"{spec.frame_id}.png", layer.types)
            entry["hatch_angle_deg"] = round(layer.hatch_angle_deg, 3)
            entry["part_fraction"] = round(float(layer.part_mask.mean()), 6)
            entry["defects"] = [d.to_dict() for d in layer.defects]
        written.update(out / f for f in _frame_files(spec))
        entries.append(entry)
        if progress is not None:
            progress(i + 1, len(frames))
    for stale in previous:
        if stale not in written:
            stale.unlink()
    manifest = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "config": cfg.model_dump(),
        "size": [cfg.size, cfg.size],
        "views": list(TRIPLET_VIEWS),
        "view_azimuth_deg": list(VIEW_AZIMUTH_DEG),
        "hatch_rotation_deg": HATCH_ROTATION_DEG,
        "defect_types": list(DEFECT_TYPES),
        "bbox_convention": "x0, y0 inclusive; x1, y1 exclusive (px)",
        "layers": entries,
    }
    write_json(out / "manifest.json", manifest)
    return manifest
