"""Parts on the build plate: where they sit, each layer's melted cross-section, hatch angles."""

from __future__ import annotations

import math

import numpy as np

from pbf_core.config import SynthConfig
from pbf_core.data.synthetic.fields import _STREAM_PARTS, _grid, _rng
from pbf_core.data.synthetic.specs import PartSpec

#: Scan-vector rotation between consecutive layers (degrees), the common choice of PBF machines.
HATCH_ROTATION_DEG = 67.0


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
