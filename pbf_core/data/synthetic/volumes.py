"""3D defects: pores and lack-of-fusion columns that continue through consecutive layers.

With ``SynthConfig.volume_defects`` > 0 the build plans its 3D defects once
(:func:`plan_volumes`, a random stream of its own, so builds without them stay bit-identical):
each has an id, a first layer and a length of 2-12 layers, a centre on the plate and a radius
that swells and shrinks along z. :func:`paint_volumes` paints the slices a layer cuts through
(dark, as holes are) after its own 2D defects; each slice is recorded with its volume's id, so
the manifest says which 2D defects are one flaw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from pbf_core.config import SynthConfig
from pbf_core.data.layers import defect_code
from pbf_core.data.synthetic.defects import _claim_pixels, _describe_defect, _light_defect
from pbf_core.data.synthetic.fields import _STREAM_VOLUMES, _rng
from pbf_core.data.synthetic.specs import Defect
from pbf_core.data.synthetic.styles import Look


@dataclass(frozen=True)
class VolumeSpec:
    """A planned 3D defect: layers ``z0`` to ``z1`` (exclusive), centre and radius (px)."""

    id: int
    z0: int
    z1: int
    cy: int
    cx: int
    radius: float

    def to_dict(self) -> dict:
        return asdict(self)

    def radius_at(self, z: int) -> float:
        """The slice radius at layer ``z``: largest mid-way, smaller at both ends."""
        t = (z - self.z0 + 0.5) / (self.z1 - self.z0)
        return self.radius * (0.6 + 0.4 * math.sin(math.pi * t))


def plan_volumes(cfg: SynthConfig) -> tuple[VolumeSpec, ...]:
    """The build's 3D defects (none when ``cfg.volume_defects`` is 0)."""
    if cfg.volume_defects <= 0:
        return ()
    rng = _rng(cfg, _STREAM_VOLUMES)
    count = int(rng.poisson(cfg.volume_defects * cfg.layers / 100))
    n, out = cfg.size, []
    for i in range(count):
        length = int(rng.integers(2, 13))
        z0 = int(rng.integers(0, max(1, cfg.layers - 1)))
        cy, cx = (int(v) for v in rng.integers(int(0.1 * n), int(0.9 * n), size=2))
        radius = float(rng.uniform(2.5, 7.0)) * n / 512
        out.append(VolumeSpec(i, z0, min(cfg.layers, z0 + length), cy, cx, max(radius, 1.5)))
    return tuple(out)


def paint_volumes(
    cfg: SynthConfig,
    z: int,
    variant: int,
    value: np.ndarray,
    types: np.ndarray,
    part: np.ndarray,
    look: Look,
) -> list[Defect]:
    """Paint the slices of the 3D defects that layer ``z`` cuts (``value`` and ``types`` in
    place); returns their records."""
    rng = _rng(cfg, _STREAM_VOLUMES, z, variant)
    out, inside = [], look.inside_frame(types.shape[0])
    for v in plan_volumes(cfg):
        if not v.z0 <= z < v.z1:
            continue
        r = v.radius_at(z)
        side = 2 * math.ceil(r) + 1
        yy, xx = np.mgrid[:side, :side] - side // 2
        claimed = _claim_pixels((yy**2 + xx**2) <= r * r, v.cy, v.cx, types)
        if claimed is None:
            continue
        window, own = claimed
        area = int(own.sum())
        if area == 0:
            continue
        _light_defect(rng, "hole", value[:, window[0], window[1]], own, area, look)
        types[window][own] = defect_code("hole")
        d = _describe_defect("hole", window, own, part, inside)
        if d is not None:
            out.append(Defect(d.type, d.bbox, d.area, d.on_part, volume=v.id))
    return out
