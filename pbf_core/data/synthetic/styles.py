"""Looks and style families: how a synthetic layer appears, drawn per layer from wide ranges.

A :class:`Look` holds every appearance parameter of one layer: powder brightness, grain and
clumps, part reflectivity, hatch texture, lighting directions, gradient and vignetting, relief
shading, sensor noise (read, shot, speckle, salt-and-pepper, fixed-pattern), defocus and motion
blur, camera gamma, bit depth, JPEG compression, faint recoater streaks, one-view shadow spots
(hard negatives), a machine frame around the bed, defect contrast and the scale of features in
pixels. The ``classic`` look is the generator's original one, constant for every layer, so
``classic`` builds are byte-identical to those of earlier versions.

A style family (:data:`STYLES`) gives ranges for some of those parameters; each layer draws its
look uniformly within them from a random stream of its own, so a build of one family still varies
layer to layer. ``mixed`` draws a training family per layer. ``foundry`` is held out: no
training preset uses it, so it measures how a model does on a look it never saw. Some of its
parameters fall inside training ranges on their own (recoater streaks and scan-track spacing vary
across the training families, as they vary across printers); what no training family draws is its
coarse feature scale (grain, clumps and blur 1.4-2.2 × classic), its gamma above 1 and its hot
and dead pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import numpy as np

from pbf_core.config import SynthConfig
from pbf_core.data.synthetic.fields import _rng

_STREAM_LOOK = 5


@dataclass(frozen=True)
class Look:
    """Every appearance parameter of one layer (the ``classic`` values as defaults)."""

    powder_level: float = 24_000.0  # mean powder counts at the plate centre (16-bit)
    grain_amp: float = 0.012  # powder albedo change of the grain texture
    clump_amp: float = 0.012  # ... and of the clumps
    feature_scale: float = 1.0  # grain, clump, hatch and blur sizes in px (pixel scale)
    part_gain: float = 1.65  # melted metal reflects this much more than powder
    hatch_contrast: float = 0.07  # albedo ripple of the scan tracks
    hatch_scale: float = 1.0  # scan-track spacing relative to the classic one (× feature_scale)
    light_azimuth: float = 0.0  # azimuth of view a (deg); b and c follow at +120, +240
    light_gradient: float = 0.22  # brighter towards each lamp across the plate
    vignetting: float = 0.35  # lens fall-off towards the corners
    relief_shading: float = 0.16  # shading per unit slope of the powder relief
    read_noise: float = 110.0  # sensor read noise (counts)
    shot_gain: float = 4.0  # shot-noise variance per count
    speckle: float = 0.0  # multiplicative noise std (fraction)
    salt_pepper: float = 0.0  # fraction of pixels stuck at 0 or full scale
    fixed_pattern: float = 0.0  # column and row offset std (counts)
    blur: float = 0.0  # defocus blur sigma (px, before noise)
    motion_blur: float = 0.0  # motion blur length (px, before noise)
    gamma: float = 1.0  # camera response exponent on normalised counts
    bit_depth: int = 16  # bits the camera delivers (stored in 16-bit PNGs)
    jpeg_quality: int = 0  # JPEG round trip of each view (0 = off)
    streaks: float = 0.0  # faint recoater streaks across the bed, not defects (fraction)
    shadow_spots: int = 0  # dark spots seen by one view only: not defects (hard negatives)
    frame: float = 0.0  # width of a machine frame around the bed (fraction of the side)
    dark_contrast: float = 1.0  # scales how much light dark defects take away
    bright_contrast: float = 1.0  # scales how far bright defects go towards full scale

    @property
    def azimuths(self) -> tuple[float, float, float]:
        """Lighting azimuths of views a, b, c (degrees)."""
        return tuple((self.light_azimuth + k * 120.0) % 360.0 for k in range(3))

    def frame_px(self, n: int) -> int:
        """Width in pixels of the machine frame on an ``n``-pixel side (0 without a frame)."""
        return max(2, round(self.frame * n)) if self.frame else 0

    def inside_frame(self, n: int) -> np.ndarray | None:
        """``(n, n)`` bool: the bed inside the machine frame (None without a frame)."""
        width = self.frame_px(n)
        if not width:
            return None
        inside = np.zeros((n, n), bool)
        inside[width : n - width, width : n - width] = True
        return inside

    @property
    def effects(self) -> bool:
        """Whether anything beyond the classic rendering applies (extra passes, extra draws)."""
        names = ("speckle", "salt_pepper", "fixed_pattern", "blur", "motion_blur", "streaks",
                 "shadow_spots", "frame")  # fmt: skip
        plain = all(getattr(self, n) == 0 for n in names)
        return not (plain and self.gamma == 1.0 and self.bit_depth == 16 and not self.jpeg_quality)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


CLASSIC = Look()

#: Ranges of a family of looks: parameter → (low, high) drawn uniformly per layer.
LookRanges = Mapping[str, tuple[float, float]]

#: Families of looks: parameter → (low, high) drawn uniformly per layer. Integers stay integers.
STYLES: dict[str, LookRanges] = {
    "classic": {},
    "lab": {
        "powder_level": (19_000, 30_000),
        "grain_amp": (0.008, 0.02),
        "read_noise": (80, 200),
        "light_gradient": (0.12, 0.32),
        "vignetting": (0.2, 0.45),
        "light_azimuth": (-20, 20),
        "dark_contrast": (0.7, 1.1),
        "streaks": (0.0, 0.02),
        "hatch_scale": (0.7, 1.6),
    },
    "bright": {
        "powder_level": (34_000, 48_000),
        "grain_amp": (0.02, 0.045),
        "clump_amp": (0.01, 0.03),
        "read_noise": (150, 450),
        "gamma": (0.65, 0.9),
        "vignetting": (0.1, 0.3),
        "blur": (0.0, 0.9),
        "part_gain": (1.25, 1.5),
        "streaks": (0.0, 0.025),
        "hatch_contrast": (0.03, 0.12),
    },
    "dim": {
        "powder_level": (7_000, 13_000),
        "shot_gain": (6, 14),
        "read_noise": (80, 220),
        "fixed_pattern": (20, 90),
        "bit_depth": (12, 12),
        "part_gain": (1.4, 2.1),
        "dark_contrast": (0.6, 1.0),
        "streaks": (0.0, 0.02),
        "hatch_scale": (1.0, 2.2),
    },
    "speckle": {
        "speckle": (0.02, 0.07),
        "motion_blur": (0, 3),
        "light_gradient": (0.3, 0.5),
        "light_azimuth": (0, 360),
        "jpeg_quality": (60, 92),
        "hatch_contrast": (0.04, 0.14),
        "hatch_scale": (0.6, 2.0),
        "streaks": (0.005, 0.035),
    },
    "am04": {
        "frame": (0.06, 0.14),
        "bit_depth": (8, 8),
        "jpeg_quality": (70, 95),
        "vignetting": (0.4, 0.65),
        "light_gradient": (0.3, 0.45),
        "feature_scale": (0.7, 1.3),
        "shadow_spots": (1, 4),
        "bright_contrast": (0.6, 1.0),
        "streaks": (0.0, 0.02),
    },
    # held out: no training preset draws from it
    "foundry": {
        "feature_scale": (1.4, 2.2),
        "salt_pepper": (2e-4, 1.5e-3),
        "fixed_pattern": (30, 120),
        "gamma": (1.1, 1.4),
        "powder_level": (14_000, 22_000),
        "streaks": (0.01, 0.03),
        "shadow_spots": (2, 6),
        "light_azimuth": (30, 90),
        "dark_contrast": (0.6, 0.9),
    },
}
#: The families ``mixed`` draws from (everything but the held-out one).
TRAINING_STYLES: tuple[str, ...] = ("classic", "lab", "bright", "dim", "speckle", "am04")
HELD_OUT_STYLE = "foundry"
STYLE_NAMES: tuple[str, ...] = (*STYLES, "mixed")


def draw_look(
    cfg: SynthConfig,
    z: int,
    variant: int = 0,
    ranges: LookRanges | None = None,
) -> Look:
    """The look of layer ``z`` (re-render ``variant``) of a ``cfg.style`` build.

    ``classic`` is the same constant look for every layer; other families draw each parameter
    uniformly in their range from the layer's own look stream (the rendering streams are not
    touched, so the layer's parts and defects are those of the classic build).

    Args:
        ranges: draw from these ``parameter → (low, high)`` ranges instead of the family's own
            (a benchmark that varies one parameter of a family); not with ``mixed``, which
            draws a family per layer.
    """
    if ranges is None and cfg.style == "classic":
        return CLASSIC
    if ranges is not None and cfg.style == "mixed":
        raise ValueError("ranges replace one family's ranges; style 'mixed' draws several")
    rng = _rng(cfg, _STREAM_LOOK, z, variant)
    family = cfg.style
    if family == "mixed":
        family = TRAINING_STYLES[int(rng.integers(len(TRAINING_STYLES)))]
    values: dict[str, float | int] = {}
    for name, (lo, hi) in (STYLES[family] if ranges is None else ranges).items():
        if not hasattr(CLASSIC, name):
            raise ValueError(f"unknown look parameter {name!r} in ranges")
        value = float(rng.uniform(lo, hi))
        values[name] = round(value) if isinstance(getattr(CLASSIC, name), int) else value
    return replace(CLASSIC, **values)
