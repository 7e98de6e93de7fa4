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

Looks (``SynthConfig.style``): ``classic`` renders every layer with the one look described above;
a style family (``styles.STYLES``) draws each layer's look (powder, grain, lighting, noise model,
blur, gamma, bit depth, JPEG, streaks, a machine frame, defect contrast, ...) from wide ranges, so
a model can be trained on many looks and tested on a held-out family (``foundry``). A look changes
only the appearance: the parts and defects of a layer are the same in every style.

The stages, one module each: ``specs`` (what is planned and made), ``fields`` (seeded random
streams, pixel grid, smooth noise), ``styles`` (looks and their families), ``parts`` (part plans,
masks, hatch angles), ``defects`` (defect shapes and painting), ``render`` (powder, lighting,
sensor, layers and noise frames), ``camera`` (a look's clutter, optics and camera) and ``build``
(frame plan, file naming, :func:`generate_build`).
"""

from __future__ import annotations

from pbf_core.data.synthetic.build import GENERATOR, GENERATOR_VERSION, generate_build, plan_frames
from pbf_core.data.synthetic.parts import HATCH_ROTATION_DEG, hatch_angle, part_mask, plan_parts
from pbf_core.data.synthetic.render import (
    PART_GAIN,
    POWDER_LEVEL,
    VIEW_AZIMUTH_DEG,
    render_frame,
    render_layer,
)
from pbf_core.data.synthetic.specs import NOISE_KINDS, Defect, FrameSpec, PartSpec, RenderedLayer
from pbf_core.data.synthetic.styles import (
    HELD_OUT_STYLE,
    STYLE_NAMES,
    STYLES,
    TRAINING_STYLES,
    Look,
    draw_look,
)

__all__ = [
    "GENERATOR",
    "GENERATOR_VERSION",
    "HATCH_ROTATION_DEG",
    "HELD_OUT_STYLE",
    "NOISE_KINDS",
    "PART_GAIN",
    "POWDER_LEVEL",
    "STYLES",
    "STYLE_NAMES",
    "TRAINING_STYLES",
    "VIEW_AZIMUTH_DEG",
    "Defect",
    "FrameSpec",
    "Look",
    "PartSpec",
    "RenderedLayer",
    "draw_look",
    "generate_build",
    "hatch_angle",
    "part_mask",
    "plan_frames",
    "plan_parts",
    "render_frame",
    "render_layer",
]
