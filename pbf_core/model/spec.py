"""The model spec: everything needed to use a trained network besides its weights.

It travels with the weights (in the checkpoint and in every ONNX file), so a prediction never
depends on a constant kept elsewhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SPEC_VERSION = 1
#: Spatial stride of the encoders: network inputs must be multiples of it.
OUTPUT_STRIDE = 32


class ModelSpec(BaseModel):
    """Everything needed to use a trained model besides its weights.

    Attributes:
        arch, encoder, in_channels, classes, decoder_channels, head, head_width: rebuild the
            network (see :func:`create_model`).
        views: input channels in order, e.g. ``("a", "b", "c")`` or ``("image",)``.
        normalization, percentiles: how raw layers are mapped to [0, 1] per view (as in
            :class:`pbf_core.config.PrepareConfig`).
        bed_only: predictions outside the powder bed (a machine frame, parts of the machine
            around it) are dropped (:func:`~pbf_core.deploy.inputs.keep_to_bed`).
        tile_size, tile_overlap: inference tiles (px) stitched back at native resolution.
        flips: each prediction is averaged with those of the layer's left-right and up-down
            mirror images (:func:`~pbf_core.deploy.tiling.mirror_average`; 3x the inference).
        threshold: decision threshold on the defect probability.
        labels: what the model was trained on (``weak`` labels or ``truth`` masks).
        train_data_digest: digest of the training data (layer ids and files), for lineage.
        created_at: UTC time the spec was written.
        metrics: held-out metrics at ``threshold`` (fractions, counts per image).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = SPEC_VERSION
    arch: str = "unet"
    encoder: str = "mobilenet_v2"
    in_channels: int = Field(3, ge=1, le=16)
    classes: int = Field(1, ge=1)
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    head: Literal["full", "shuffle"] = "shuffle"
    head_width: int = Field(32, ge=0)
    views: tuple[str, ...] = ("a", "b", "c")
    normalization: Literal["percentile", "bed", "flatfield", "bed_flatfield", "minmax"] = (
        "percentile"
    )
    percentiles: tuple[float, float] = (0.5, 99.5)
    bed_only: bool = False  # (models trained before it predict over the whole picture)
    tile_size: int = Field(256, ge=32)
    tile_overlap: int = Field(32, ge=0)
    flips: bool = False
    threshold: float = Field(0.5, gt=0, lt=1)
    labels: Literal["weak", "truth"] = "weak"
    train_data_digest: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if len(self.views) != self.in_channels:
            raise ValueError(
                f"{len(self.views)} views {self.views} for {self.in_channels} channels"
            )
        if self.tile_size % OUTPUT_STRIDE:
            raise ValueError(
                f"tile_size must be a multiple of {OUTPUT_STRIDE}, got {self.tile_size}"
            )
        if self.tile_overlap >= self.tile_size // 2:
            raise ValueError(f"tile_overlap {self.tile_overlap} must be below half the tile")
        return self
