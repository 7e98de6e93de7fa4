"""The score step: every layer of a build scored, its defects joined in 3D, tables written.

:func:`score_build` (``pbf score``) reads any raw layout ``pbf prepare`` knows, scores each layer
(:func:`pbf_core.scoring.layers.score_layer`, resumable), joins the components of consecutive
usable layers into 3D defects (:class:`pbf_core.scoring.volumes.DefectJoiner`) and writes::

    OUT/layers.parquet       one row per layer: usable or the filter's reason, defect pixels,
                             area %, components, peak probability, model, threshold, seconds
    OUT/components.parquet   one row per 2D component, with its 3D defect id
    OUT/defects.parquet      one row per 3D defect: z range, layers, voxels, bbox, peak
    OUT/masks/<layer>.png    each usable layer's defect mask
    OUT/layers/<layer>.json  each layer's record (what a rerun reuses)
    OUT/summary.json         the build's verdict and counts
    OUT/report.html, .json   the build report (:mod:`pbf_core.scoring.report`)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pbf_core.data.layers import LayerRecord
from pbf_core.data.prepare import DiscoveredLayers, discover_layers
from pbf_core.errors import DatasetError
from pbf_core.files import file_digest, write_json
from pbf_core.scoring.layers import ScoredLayer, layer_labels
from pbf_core.scoring.report import write_report
from pbf_core.scoring.runners import Runner, map_layers
from pbf_core.scoring.volumes import Defect, DefectJoiner

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BuildScore:
    """What :func:`score_build` found and wrote.

    Attributes:
        out: the output directory.
        layers: every layer's result, in build order.
        defects: the 3D defects.
        flagged: ids of usable layers with a component of at least ``min_area`` px.
        scored, reused: layers segmented by this run / read from an earlier one.
        defect_ids: each component's 3D defect id, in layer and component order.
    """

    out: Path
    layers: tuple[ScoredLayer, ...]
    defects: tuple[Defect, ...]
    flagged: tuple[str, ...]
    scored: int
    reused: int
    defect_ids: tuple[int, ...] = ()

    def summary(self) -> dict:
        usable = [s for s in self.layers if s.score.usable]
        return {
            "layers": len(self.layers),
            "usable": len(usable),
            "unusable": {s.score.layer: s.score.reason for s in self.layers if not s.score.usable},
            "flagged": list(self.flagged),
            "defects": len(self.defects),
            "largest_defects": [d.to_dict() for d in sorted(self.defects, key=lambda d: -d.voxels)[:10]],
            "scored": self.scored,
            "reused": self.reused,
            "verdict": f"defects in {len(self.flagged)} of {len(usable)} usable layers, "
            f"{len(self.defects)} 3D defects" if self.flagged else f"no defects in {len(usable)} usable layers",
        }  # fmt: skip


def join_defects(out: Path, layers: list[ScoredLayer]) -> tuple[list[Defect], list[int]]:
    """The 3D defects of the scored layers and each component's defect id (in layer order)."""
    joiner = DefectJoiner()
    for scored in layers:
        joiner.add(layer_labels(out, scored), list(scored.components))
    return joiner.defects(), joiner.defect_ids()


def write_tables(out: Path, layers: list[ScoredLayer], model: dict, joined) -> None:
    """``layers.parquet``, ``components.parquet`` and ``defects.parquet`` (replaced whole)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    defects, ids = joined
    rows = [{**asdict(s.score), **model} for s in layers]
    comps = [asdict(c) for s in layers for c in s.components]
    for row, defect_id in zip(comps, ids, strict=True):
        row["defect_id"] = defect_id
    tables = {"layers": rows, "components": comps, "defects": [d.to_dict() for d in defects]}
    for name, data in tables.items():
        tmp = out / f".{name}.parquet.tmp"
        pq.write_table(pa.Table.from_pylist(data), tmp)
        tmp.replace(out / f"{name}.parquet")


def read_model_spec(model: str | Path):
    """The spec of a model file (checks it before any layer is read).

    Raises:
        CheckpointError, ExportError: missing or unreadable file, or no pbf spec in it.
    """
    if Path(model).suffix == ".onnx":
        from pbf_core.deploy.metadata import read_onnx_spec

        return read_onnx_spec(model)
    from pbf_core.model.checkpoints import read_spec

    return read_spec(model)


def discover_build(raw: str | Path, out: Path) -> DiscoveredLayers:
    """The build's layers and their digests (zip archives unpacked under ``out/staging``).

    Raises:
        DatasetError: missing, empty or unrecognised build.
    """
    found = discover_layers(raw, out / "staging")
    if not found.source.records:
        raise DatasetError(Path(raw), "no layers in the build")
    return found


def model_key(model: str | Path, spec) -> str:
    """What a layer's record is keyed by besides its bytes: the model file and its threshold."""
    return f"{file_digest(model)}:{spec.threshold}"


@dataclass(frozen=True)
class ScoringModel:
    """A model file with its spec and cache key, read once per scoring."""

    path: Path
    spec: Any
    key: str

    @classmethod
    def open(cls, path: str | Path) -> ScoringModel:
        """Read the spec and digest the file (CheckpointError/ExportError when unreadable)."""
        spec = read_model_spec(path)
        return cls(Path(path), spec, model_key(path, spec))


def finish_build(
    raw: str | Path,
    model: ScoringModel,
    out: Path,
    layers: list[ScoredLayer],
    records: Sequence[LayerRecord],
    min_area: int = 20,
) -> BuildScore:
    """Join the scored layers' defects in 3D; write the tables, summary and report
    (``records``: the build's raw layers, for the worst layers' overlays)."""
    joined = join_defects(out, layers)
    meta = {"model": model.path.name, "model_digest": model.key}
    write_tables(out, layers, meta, joined)
    flagged = tuple(s.score.layer for s in layers if any(c.area >= min_area for c in s.components))
    reused = sum(s.reused for s in layers)
    result = BuildScore(
        out,
        tuple(layers),
        tuple(joined[0]),
        flagged,
        len(layers) - reused,
        reused,
        tuple(joined[1]),
    )
    write_json(out / "summary.json", result.summary())
    write_report(
        result, f"Build report: {Path(raw).name}", worst_overlays(out, layers, records, model.spec)
    )
    return result


def score_build(
    raw: str | Path,
    model: str | Path,
    out: str | Path,
    min_area: int = 20,
    runner: Runner | None = None,
    progress: Progress | None = None,
) -> BuildScore:
    """Score every layer of the build at ``raw`` with ``model``; write the tables into ``out``.

    Args:
        raw: the build (Kaggle a/b/c triplets, an images folder, a synthetic build; dir or zip).
        model: ``.onnx`` with pbf metadata (int8 or fp32) or a ``.safetensors`` checkpoint.
        out: output directory; layers already scored there with the same model are reused.
        min_area: a layer is flagged when one of its components has at least this many px.
        runner: where the layers are scored (this process by default; see :class:`Runner`).
        progress: called as ``progress(done, total)`` after each layer.

    Raises:
        DatasetError: missing, empty or unrecognised build.
        CheckpointError, ExportError: missing or unreadable model.
    """
    out, scoring = Path(out), ScoringModel.open(model)
    found = discover_build(raw, out)
    layers = map_layers(
        found.source.records, found.digests, str(model), out, scoring.key, runner or Runner(),
        progress,
    )  # fmt: skip
    return finish_build(raw, scoring, out, layers, found.source.records, min_area)


def worst_overlays(out: Path, layers: list[ScoredLayer], records, spec, n: int = 3) -> dict:
    """Overlays of the ``n`` layers with the most defect pixels (at most 640 px wide)."""
    import cv2

    from pbf_core.config import PrepareConfig
    from pbf_core.data.filtering import FrameRejected, load_layer_set
    from pbf_core.data.imaging import read_mask
    from pbf_core.deploy.overlays import render_overlay

    by_id = {r.layer_id: r for r in records}
    worst = sorted(
        (s for s in layers if s.score.defect_pixels), key=lambda s: -s.score.defect_pixels
    )
    cfg = PrepareConfig(normalization=spec.normalization, percentiles=spec.percentiles)
    overlays = {}
    for s in worst[:n]:
        try:
            image = load_layer_set(by_id[s.score.layer], cfg).image
        except FrameRejected:  # changed on disk since it was scored: no picture
            continue
        mask = read_mask(out / "masks" / f"{s.score.layer}.png")
        rgb = render_overlay(image, mask, list(s.components))
        scale = min(1.0, 640 / rgb.shape[1])
        if scale < 1.0:
            size = (640, max(1, round(rgb.shape[0] * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        overlays[s.score.layer] = rgb
    return overlays
