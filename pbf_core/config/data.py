"""Configs of the data stage: synthetic builds, frame filtering, weak labels, preparation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pbf_core.config.base import Frozen

#: Style families of the synthetic generator (``foundry`` is held out of training presets).
SynthStyle = Literal["classic", "lab", "bright", "dim", "speckle", "am04", "foundry", "mixed"]


class SynthConfig(Frozen):
    """Synthetic PBF build: ``layers`` a/b/c triplets of ``size``² 16-bit pixels."""

    layers: int = Field(40, ge=1, le=10_000)
    size: int = Field(512, ge=32, le=8192, description="layer width and height (px)")
    seed: int = 0
    parts: int = Field(4, ge=1, le=32, description="parts on the build plate")
    defects_per_layer: float = Field(3.0, ge=0, le=100, description="mean true defects per layer")
    noise_frames: float = Field(
        0.1, ge=0, le=0.9, description="fraction of extra unusable frames (incomplete, blank, ...)"
    )
    style: SynthStyle = Field(
        "classic",
        description="look of the layers (data/synthetic/styles.py): classic = one fixed look; a "
        "family draws each layer's from wide ranges; mixed = a training family per layer",
    )
    volume_defects: float = Field(
        0.0,
        ge=0,
        le=100,
        description="3D defects per 100 layers: pores and lack-of-fusion columns through 2-12 "
        "consecutive layers, recorded with an id (0 = none: every defect lives in one layer)",
    )


class FilterConfig(Frozen):
    """When a frame is not a usable layer image."""

    min_dynamic_range: float = Field(
        0.02, gt=0, lt=1, description="p99-p1 below this fraction of full scale: blank frame"
    )
    max_saturated_fraction: float = Field(
        0.05, gt=0, le=1, description="fraction of pixels at the top code above this: saturated"
    )
    min_part_fraction: float = Field(
        0.002, ge=0, lt=1, description="melted-part area below this fraction: no layer content"
    )
    part_contrast: float = Field(
        6.0, gt=0, description="local mean deviating this many robust sigmas from powder: part"
    )
    part_texture: float = Field(
        3.0, gt=1, description="local std above this multiple of the powder's: part (hatching)"
    )
    content_check: Literal["triplets", "always", "never"] = Field(
        "triplets",
        description="where the no-content check applies: after-recoat single images (am04) "
        "legitimately show only powder, so by default only a/b/c triplets are checked",
    )


class ThresholdLabelConfig(Frozen):
    """The prototype's rule: dark in ``min_votes`` of the views, open/close, minimum blob area.

    The prototype's threshold is not documented; 0.04 is the best pixel IoU on the same synthetic
    tuning build as the background method (seed 1), so the baseline is not a straw man.
    """

    threshold: float = Field(0.04, gt=0, lt=1, description="normalised intensity below = dark")
    min_votes: int = Field(2, ge=1, le=3, description="views that must agree (clamped to C)")
    kernel: int = Field(3, ge=1, le=31, description="open/close square side (px)")
    min_area: int = Field(4, ge=1, description="smallest kept blob (px)")


class BackgroundLabelConfig(Frozen):
    """Deviation from the local background, dark and bright, consistent across views.

    Defaults were tuned on synthetic builds of 40 layers of 512 px (thresholds and windows on
    seed 1; the ring rule after thin ring parts failed on seeds 2 and 3), never on real data.
    """

    background_kernel: int = Field(
        31, ge=3, le=255, description="median background and spread window (px, odd)"
    )
    structure_radius: int = Field(
        7, ge=1, le=64, description="structures containing a disk this wide are not defects (px)"
    )
    reference_size: int | None = Field(
        512,
        ge=32,
        description="kernel and radius are for layers this size (shorter side, px) and scale "
        "with it; None = use them as given",
    )
    texture_kernel: int = Field(
        5,
        ge=0,
        le=5,
        description="median window (0, 3 or 5) hiding hatch texture in a 2nd bright pass (0=off)",
    )
    dark_sigma: float = Field(2.5, gt=0, description="robust z below -dark_sigma = dark defect")
    bright_sigma: float = Field(
        4.0, gt=0, description="robust z above bright_sigma = bright defect"
    )
    min_contrast: float = Field(
        0.02, ge=0, lt=1, description="and |image - background| above this (normalised units)"
    )
    min_spread: float = Field(
        0.005, gt=0, lt=1, description="floor of the local robust spread (normalised units)"
    )
    single_view_sigma_boost: float = Field(
        1.5, ge=0, description="added to both sigmas when one view's vote suffices (no 2nd opinion)"
    )
    grow_fraction: float = Field(
        0.5, gt=0, le=1, description="seeds grow into neighbours past this fraction of thresholds"
    )
    min_votes: int = Field(2, ge=1, le=3, description="views that must agree (clamped to C)")
    min_area: int = Field(4, ge=1, description="smallest kept blob (px)")
    max_area_fraction: float = Field(0.02, gt=0, le=1, description="larger blobs are not defects")
    max_hole_fraction: float = Field(
        0.25, ge=0, description="blobs enclosing more bed than this share of their area are rings"
    )
    detect_bright: bool = True
    tail_quantile: float | None = Field(
        None,
        gt=0.5,
        lt=1,
        description="adapt to each image: this quantile of its agreed seed scores (score 1 = "
        "just passes both thresholds) ... None = fixed thresholds",
    )
    tail_gain: float = Field(
        1.9, gt=0, description="... times this gain, when above 1, multiplies every threshold"
    )

    @model_validator(mode="after")
    def _check_odd_kernels(self) -> BackgroundLabelConfig:
        for name in ("background_kernel", "texture_kernel"):
            k = getattr(self, name)
            if k and k % 2 == 0:
                raise ValueError(f"{name} must be odd, got {k}")
        return self


class AdaptiveLabelConfig(BackgroundLabelConfig):
    """The background method with thresholds each image raises from its own statistics.

    Under independent sensor noise, the 99th percentile of a layer's agreed seed score sits near
    0.5 whatever the camera; a texture every view sees alike (coarse, bright powder grain) lifts
    it, and all thresholds rise by ``tail_gain`` times that percentile instead of labelling the
    grain. The gain was chosen on the training style families (classic, lab, bright, dim,
    speckle, am04-like), never on the held-out ``foundry`` family or on real images.
    """

    tail_quantile: float | None = Field(0.99, gt=0.5, lt=1)
    tail_gain: float = Field(1.9, gt=0)


class LabelConfig(Frozen):
    """Weak label synthesis: which method and the parameters of each."""

    method: Literal["threshold", "background", "adaptive"] = "background"
    threshold: ThresholdLabelConfig = ThresholdLabelConfig()
    background: BackgroundLabelConfig = BackgroundLabelConfig()
    adaptive: AdaptiveLabelConfig = AdaptiveLabelConfig()
    bed_only: bool = Field(
        True,
        description="keep weak labels inside the powder bed only (imaging.bed_mask: a machine "
        "frame or machinery around the bed is never labelled a defect)",
    )


class PrepareConfig(Frozen):
    """Raw layers → prepared dataset (filtered layer sets, normalised images, weak labels)."""

    normalization: Literal["percentile", "bed", "flatfield", "bed_flatfield", "minmax"] = Field(
        "percentile",
        description="percentile: stretch each view between its percentiles; bed: between the "
        "percentiles of the powder bed alone (a machine frame around it left out); flatfield: "
        "divide by the view's smooth background first (vignetting, light gradients); "
        "bed_flatfield: both (the bed's percentiles of that ratio: a light ramp across the "
        "plate no longer flattens the defects' contrast); minmax",
    )
    percentiles: tuple[float, float] = (0.5, 99.5)
    max_pixels: int = Field(64_000_000, ge=1, description="refuse larger images (px)")
    filter: FilterConfig = FilterConfig()
    labels: LabelConfig = LabelConfig()

    @model_validator(mode="after")
    def _check_percentiles(self) -> PrepareConfig:
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {lo}, {hi}")
        return self
