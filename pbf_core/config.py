"""Validated configuration: frozen pydantic models, YAML presets, ``PBF_`` environment settings.

Nothing here touches the disk or the environment at import time: call :func:`load_config` and
:class:`Settings` explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pbf_core.errors import PbfError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SynthConfig(_Frozen):
    """Synthetic PBF build: ``layers`` a/b/c triplets of ``size``² 16-bit pixels."""

    layers: int = Field(40, ge=1, le=10_000)
    size: int = Field(512, ge=32, le=8192, description="layer width and height (px)")
    seed: int = 0
    parts: int = Field(4, ge=1, le=32, description="parts on the build plate")
    defects_per_layer: float = Field(3.0, ge=0, le=100, description="mean true defects per layer")
    noise_frames: float = Field(
        0.1, ge=0, le=0.9, description="fraction of extra unusable frames (incomplete, blank, ...)"
    )


class FilterConfig(_Frozen):
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


class ThresholdLabelConfig(_Frozen):
    """The prototype's rule: dark in ``min_votes`` of the views, open/close, minimum blob area."""

    threshold: float = Field(0.2, gt=0, lt=1, description="normalised intensity below = dark")
    min_votes: int = Field(2, ge=1, le=3)
    kernel: int = Field(3, ge=1, le=31)
    min_area: int = Field(4, ge=1, description="smallest kept blob (px)")


class BackgroundLabelConfig(_Frozen):
    """Deviation from a local background estimate, dark and bright, consistent across views."""

    background_kernel: int = Field(
        31, ge=3, le=255, description="median background window (px, odd)"
    )
    dark_sigma: float = Field(4.0, gt=0, description="robust z below -dark_sigma = dark defect")
    bright_sigma: float = Field(
        5.0, gt=0, description="robust z above bright_sigma = bright defect"
    )
    min_contrast: float = Field(
        0.05, ge=0, lt=1, description="and |image - background| above this (normalised units)"
    )
    min_spread: float = Field(
        0.01, gt=0, lt=1, description="floor of the local robust spread (normalised units)"
    )
    grow_fraction: float = Field(
        0.5, gt=0, le=1, description="seeds grow into neighbours past this fraction of thresholds"
    )
    min_votes: int = Field(2, ge=1, le=3, description="views that must agree (clamped to C)")
    min_area: int = Field(4, ge=1, description="smallest kept blob (px)")
    max_area_fraction: float = Field(0.02, gt=0, le=1, description="larger blobs are not defects")
    detect_bright: bool = True

    @model_validator(mode="after")
    def _check_odd_kernel(self) -> BackgroundLabelConfig:
        if self.background_kernel % 2 == 0:
            raise ValueError(f"background_kernel must be odd, got {self.background_kernel}")
        return self


class LabelConfig(_Frozen):
    """Weak label synthesis: which method and the parameters of each."""

    method: Literal["threshold", "background"] = "background"
    threshold: ThresholdLabelConfig = ThresholdLabelConfig()
    background: BackgroundLabelConfig = BackgroundLabelConfig()


class PrepareConfig(_Frozen):
    """Raw layers → prepared dataset (filtered layer sets, normalised images, weak labels)."""

    normalization: Literal["percentile", "minmax"] = "percentile"
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


class Settings(BaseSettings):
    """Runtime settings from ``PBF_*`` environment variables (never from code constants)."""

    model_config = SettingsConfigDict(env_prefix="PBF_", extra="ignore")

    state_dir: Path = Path(".pbf")
    tracking_uri: str | None = None
    registry_name: str = "pbf-defect-segmenter"


class ConfigError(PbfError, ValueError):
    """A config file or value is invalid; the message names the file and each bad field."""


M = TypeVar("M", bound=BaseModel)


def load_config(path: str | Path | None, model: type[M], **overrides: object) -> M:
    """Load a YAML preset into ``model``, apply non-None ``overrides``, validate.

    Raises:
        ConfigError: unreadable YAML, unknown keys or bad values, each field named.
    """
    data: dict = {}
    src = "<defaults>"
    if path is not None:
        src = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{src}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{src}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{src}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{src}: invalid {model.__name__}: {problems}") from None
