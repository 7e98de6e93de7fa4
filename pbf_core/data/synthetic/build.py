"""The build: the frame plan, file naming and writing a whole build with its manifest."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from pbf_core.config import SynthConfig
from pbf_core.data.imaging import write_mask, write_raw_png
from pbf_core.data.layers import DEFECT_TYPES, TRIPLET_VIEWS
from pbf_core.data.synthetic.fields import _STREAM_FRAMES, _rng
from pbf_core.data.synthetic.parts import HATCH_ROTATION_DEG
from pbf_core.data.synthetic.render import VIEW_AZIMUTH_DEG, render_frame
from pbf_core.data.synthetic.specs import NOISE_KINDS, FrameSpec
from pbf_core.data.synthetic.volumes import plan_volumes
from pbf_core.errors import DatasetError
from pbf_core.files import write_json

GENERATOR = "pbf-synth"
GENERATOR_VERSION = 1

_FRAME_FILE = re.compile(r"^B\d{4,}(?:[abc]\.PNG|\.png)$")


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


def _write_frame(out: Path, cfg: SynthConfig, spec: FrameSpec) -> dict:
    """Render one frame, write its images (and truth and type maps for a real layer).

    Returns:
        The frame's manifest entry: ``{"id", "kind", "z"}``, plus ``"hatch_angle_deg"``,
        ``"part_fraction"`` and ``"defects"`` for a real layer.
    """
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
        if cfg.style != "classic":
            entry["look"] = {
                k: round(v, 4) if isinstance(v, float) else v
                for k, v in layer.look.to_dict().items()
            }
    return entry


def _build_manifest(cfg: SynthConfig, entries: list[dict]) -> dict:
    """The build's manifest: generator, config, image geometry, conventions and frame entries."""
    return {
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
        **({"volumes": [v.to_dict() for v in plan_volumes(cfg)]} if cfg.volume_defects else {}),
    }


def generate_build(
    out: str | Path,
    cfg: SynthConfig,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write a synthetic build to ``out`` (layout in the package docstring).

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
        entries.append(_write_frame(out, cfg, spec))
        written.update(out / f for f in _frame_files(spec))
        if progress is not None:
            progress(i + 1, len(frames))
    for stale in previous:
        if stale not in written:
            stale.unlink()
    manifest = _build_manifest(cfg, entries)
    write_json(out / "manifest.json", manifest)
    return manifest
