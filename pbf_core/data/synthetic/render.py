"""Rendering: powder, lighting and relief shading, sensor noise, real layers and noise frames."""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from pbf_core.config import SynthConfig
from pbf_core.data.layers import TRIPLET_VIEWS
from pbf_core.data.synthetic.camera import camera_effects, scene_effects
from pbf_core.data.synthetic.defects import _paint_defects, clear_frame
from pbf_core.data.synthetic.fields import (
    _STREAM_EFFECTS,
    _STREAM_LAYER,
    _STREAM_NOISE,
    _grid,
    _rng,
    _smooth_noise,
)
from pbf_core.data.synthetic.parts import hatch_angle, part_mask, plan_parts
from pbf_core.data.synthetic.specs import (
    _FULL_SCALE,
    NOISE_KINDS,
    FrameSpec,
    PartSpec,
    RenderedLayer,
)
from pbf_core.data.synthetic.styles import CLASSIC, Look, LookRanges, draw_look
from pbf_core.data.synthetic.volumes import paint_volumes

#: Lighting azimuth of views a, b, c in the classic look (degrees, x axis = 0, y pointing down).
VIEW_AZIMUTH_DEG: tuple[float, ...] = CLASSIC.azimuths

#: Mean powder level (16-bit counts) at the plate centre, classic look.
POWDER_LEVEL = CLASSIC.powder_level
#: Melted metal reflects this much more than powder (before hatch texture and glints), classic.
PART_GAIN = CLASSIC.part_gain

_PART_HEIGHT = 1.6  # how far parts stand above the powder, in height-field units (~px)
_SHADOW_DEPTH = 0.35  # fraction of light lost in a part's shadow


def _light_dirs(azimuths: tuple[float, ...] = VIEW_AZIMUTH_DEG) -> np.ndarray:
    """``(3, 2)`` unit vectors (x, y) pointing from the plate towards each view's light."""
    az = np.deg2rad(np.asarray(azimuths, dtype=np.float64))
    return np.stack([np.cos(az), np.sin(az)], axis=1).astype(np.float32)


@lru_cache(maxsize=8)
def _illumination(
    size: int,
    azimuths: tuple[float, ...] = VIEW_AZIMUTH_DEG,
    gradient: float = CLASSIC.light_gradient,
    vignetting: float = CLASSIC.vignetting,
) -> np.ndarray:
    """``(3, H, W)`` float32 relative irradiance per view: side-light gradient and vignetting."""
    yy, xx = _grid(size)
    c = (size - 1) / 2.0
    u, v = (xx - c) / size, (yy - c) / size
    r2 = u * u + v * v
    camera = 1.0 + 0.05 * v - vignetting * r2  # shared: lens vignetting, slight tilt of the plate
    out = np.empty((3, size, size), dtype=np.float32)
    for i, (lx, ly) in enumerate(_light_dirs(azimuths)):
        out[i] = camera * (1.0 + gradient * (u * lx + v * ly))  # brighter towards each lamp
    out.setflags(write=False)
    return out


def _look_illumination(n: int, look: Look) -> np.ndarray:
    return _illumination(n, look.azimuths, look.light_gradient, look.vignetting)


def _powder(
    rng: np.random.Generator, n: int, look: Look = CLASSIC
) -> tuple[np.ndarray, np.ndarray]:
    """Fresh powder: ``(albedo, height)`` float32 ``(n, n)`` from grains and clumps."""
    grains = _smooth_noise(rng, (n, n), 0.7 * look.feature_scale)
    clumps = _smooth_noise(rng, (n, n), max(2.0, n / 128) * look.feature_scale)
    albedo = 1.0 + look.grain_amp * grains + look.clump_amp * clumps
    height = 0.2 * grains + 0.5 * clumps
    return albedo, height


def _shade(
    albedo: np.ndarray,
    height: np.ndarray,
    raised: np.ndarray | None,
    n: int,
    look: Look = CLASSIC,
) -> np.ndarray:
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
    illum = _look_illumination(n, look)
    shadow_len = max(1.5, n / 170)
    out = np.empty((3, n, n), dtype=np.float32)
    for i, (lx, ly) in enumerate(_light_dirs(look.azimuths)):
        # Slopes facing the lamp catch more light (Lambert, low elevation, linearised).
        shade = np.clip(1.0 + look.relief_shading * (gx * lx + gy * ly), 0.3, 1.7)
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
    return out * np.float32(look.powder_level)


def _sensor(rng: np.random.Generator, expected: np.ndarray, look: Look = CLASSIC) -> np.ndarray:
    """Add read and shot noise to expected counts and quantise: ``(3, H, W)`` uint16."""
    read, gain = look.read_noise, look.shot_gain
    sigma = np.sqrt(np.float32(read**2) + np.float32(gain) * np.maximum(expected, 0))
    noisy = expected + sigma * rng.standard_normal(expected.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), 0, _FULL_SCALE).astype(np.uint16)


def _layer_expected(
    cfg: SynthConfig,
    z: int,
    rng: np.random.Generator,
    parts: tuple[PartSpec, ...],
    look: Look = CLASSIC,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Noise-free ``(3, n, n)`` float32 counts of layer ``z``, its part mask and hatch angle."""
    n = cfg.size
    part = part_mask(cfg, z, parts)
    angle = hatch_angle(cfg, z)
    powder_alb, powder_h = _powder(rng, n, look)
    partf = part.astype(np.float32)
    cover = cv2.GaussianBlur(partf, (0, 0), 0.6)  # anti-aliased part edge
    raised = cv2.GaussianBlur(partf, (0, 0), 1.2)

    yy, xx = _grid(n)
    period = max(4.0, n / 110) * look.feature_scale * look.hatch_scale  # hatch spacing (px)
    th = math.radians(angle)
    # Tracks run along `angle`; the texture varies across them.
    phase = (-math.sin(th) * xx + math.cos(th) * yy) * np.float32(2 * math.pi / period)
    ripple = np.sin(phase + np.float32(rng.uniform(0, 2 * math.pi)))
    ripple *= 1.0 + 0.25 * _smooth_noise(rng, (n, n), 3.0)  # uneven melt tracks

    height = powder_h * (1.0 - cover) + _PART_HEIGHT * raised + 0.9 * ripple * cover

    # Melted metal: brighter, textured along the tracks, brightest where the track direction is
    # perpendicular to the light (specular lobe), plus the contour track and a few glints.
    contour = part & ~cv2.erode(part.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    metal = look.part_gain * (
        1.0 + look.hatch_contrast * ripple + 0.04 * _smooth_noise(rng, (n, n), 0.6)
    )
    metal += 0.25 * contour
    albedo = np.empty((3, n, n), dtype=np.float32)
    part_idx = np.flatnonzero(part)
    for i, az in enumerate(look.azimuths):
        spec = 0.18 * math.sin(math.radians(angle - az)) ** 2
        view_metal = metal + spec
        if part_idx.size:
            glints = np.zeros(n * n, dtype=np.float32)
            k = max(1, part_idx.size // 600)
            glints[part_idx[rng.integers(part_idx.size, size=k)]] = 0.8
            view_metal += cv2.GaussianBlur(glints.reshape(n, n), (0, 0), 0.7) * 4.0
        albedo[i] = powder_alb * (1.0 - cover) + view_metal * cover
    return _shade(albedo, height, raised, n, look), part, angle


def render_layer(
    cfg: SynthConfig, z: int, variant: int = 0, ranges: LookRanges | None = None
) -> RenderedLayer:
    """Render layer ``z`` of the build: a pure function of ``(cfg, z, variant, ranges)``.

    Args:
        cfg: the build configuration.
        z: layer height index, 0-based; sets the part cross-sections and hatch angle.
        variant: 0 for the build's real layer; other values re-render the same layer with fresh
            powder, defects and noise (used for noise frames that copy a layer).
        ranges: the look's parameter ranges instead of the style family's own (see
            :func:`~pbf_core.data.synthetic.styles.draw_look`).

    Returns:
        The three views, the true defect mask and type map, the part mask and the defects.
    """
    if z < 0:
        raise ValueError(f"layer index z must be >= 0, got {z}")
    rng = _rng(cfg, _STREAM_LAYER, z, variant)
    look = draw_look(cfg, z, variant, ranges)
    expected, part, angle = _layer_expected(cfg, z, rng, plan_parts(cfg), look)
    types, defects = _paint_defects(rng, cfg, expected, part, look)
    if cfg.volume_defects > 0:  # 3D defects draw from a stream of their own
        defects += tuple(paint_volumes(cfg, z, variant, expected, types, part, look))
    truth = clear_frame(types, look) > 0  # a machine frame hides what was painted under it
    if not look.effects:
        views = _sensor(rng, expected, look)
    else:  # the extra effects draw from a stream of their own: the classic draws stay the same
        fx = _rng(cfg, _STREAM_EFFECTS, z, variant)
        expected = scene_effects(fx, expected, types, look)
        views = camera_effects(fx, _sensor(rng, expected, look), look)
    return RenderedLayer(views, truth, types, part, angle, defects, look)


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
