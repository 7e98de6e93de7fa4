"""What the generator plans and makes: part and frame plans, defects, rendered layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Frames that are not usable layer images; a filter must drop them.
NOISE_KINDS: tuple[str, ...] = ("incomplete", "blank", "saturated", "recoater")

_FULL_SCALE = 65_535.0


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
    volume: int | None = (
        None  # id of the 3D defect it is a slice of (``SynthConfig.volume_defects``)
    )

    def to_dict(self) -> dict:
        out = {
            "type": self.type,
            "bbox": list(self.bbox),
            "area": self.area,
            "on_part": self.on_part,
        }
        if self.volume is not None:
            out["volume"] = self.volume
        return out


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
        look: the appearance it was rendered with (None: the classic one).
    """

    views: np.ndarray
    truth: np.ndarray
    types: np.ndarray
    part_mask: np.ndarray
    hatch_angle_deg: float
    defects: tuple[Defect, ...]
    look: Any = None
