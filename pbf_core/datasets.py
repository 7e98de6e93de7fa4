"""What flows between pipeline steps: raw layer records and the prepared dataset on disk.

Prepared dataset layout (written by :func:`pbf_core.prepare.prepare_dataset`)::

    OUT/
      manifest.json        Manifest: source, format, channel views, one entry per kept layer
      report.json          kept/dropped counts with reasons, label quality per method
      images/<id>.png      16-bit PNG, normalised to full range; grey (1 view) or RGB = views a, b, c
      weak/<id>.png        weak label, 8-bit 0/255
      truth/<id>.png       true defect mask, 8-bit 0/255 (only when the source has one)
      types/<id>.png       per-pixel defect type code (see DEFECT_TYPES), when the source names types
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from pbf_core.errors import DatasetError
from pbf_core.imaging import read_layer, read_mask, read_raw_labels

#: Defect types, shared by the synthetic generator and the am04 annotations. Code = index + 1.
DEFECT_TYPES: tuple[str, ...] = ("hole", "horizontal", "incandescence", "spattering", "vertical")

TRIPLET_VIEWS: tuple[str, ...] = ("a", "b", "c")
MANIFEST_VERSION = 1


def defect_code(kind: str) -> int:
    """Type name → code stored in ``types/<id>.png`` (1-based; 0 is background)."""
    try:
        return DEFECT_TYPES.index(kind.lower()) + 1
    except ValueError:
        raise ValueError(
            f"unknown defect type {kind!r}; valid: {', '.join(DEFECT_TYPES)}"
        ) from None


@dataclass(frozen=True)
class LayerRecord:
    """One raw layer as found by ingest, before anything is read.

    Attributes:
        layer_id: stable id, e.g. ``B0001`` or ``Image12``.
        views: view name → file; ``a``/``b``/``c`` for triplets (``None`` = missing), ``image``
            for single-image sources.
        truth: binary true-mask file, if the source has one.
        instances: ``(defect type, instance mask file)`` pairs, e.g. am04's per-defect masks.
        no_defects: the source states the layer is defect-free (empty truth).
    """

    layer_id: str
    views: dict[str, Path | None]
    truth: Path | None = None
    instances: tuple[tuple[str, Path], ...] = ()
    no_defects: bool = False

    @property
    def has_truth(self) -> bool:
        return self.truth is not None or bool(self.instances) or self.no_defects


@dataclass
class RawSource:
    """A recognised raw dataset: its format and layer records (raw files are never modified)."""

    root: Path
    format: str  # "kaggle" | "folder" | "am04" | "synthetic"
    records: list[LayerRecord] = field(default_factory=list)
    #: Files that belong to no layer set (unmatched names, stray files), with a reason each.
    unmatched: list[tuple[str, str]] = field(default_factory=list)


class LayerEntry(BaseModel):
    """One prepared layer, paths relative to the dataset directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    image: str
    weak: str
    truth: str | None = None
    types: str | None = None
    height: int
    width: int


class Manifest(BaseModel):
    """``manifest.json`` of a prepared dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = MANIFEST_VERSION
    source: str
    format: str
    views: tuple[str, ...]
    label_method: str
    normalization: str
    layers: tuple[LayerEntry, ...]

    @property
    def channels(self) -> int:
        return len(self.views)


def write_json(path: str | Path, data: object) -> None:
    """Write JSON atomically (temp file + rename), so a crash never truncates an existing file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_manifest(root: str | Path) -> Manifest:
    """Read ``root/manifest.json``.

    Raises:
        DatasetError: missing directory or manifest, or a manifest that does not validate.
    """
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise DatasetError(root, "not a prepared dataset (no manifest.json); run `pbf prepare`")
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValueError as exc:
        raise DatasetError(path, f"invalid manifest ({exc})") from None


@dataclass(frozen=True)
class Sample:
    """A prepared layer in memory."""

    id: str
    image: np.ndarray  # (C, H, W) float32 in [0, 1]
    weak: np.ndarray  # (H, W) bool
    truth: np.ndarray | None  # (H, W) bool
    types: np.ndarray | None  # (H, W) uint8 codes


def load_sample(root: str | Path, entry: LayerEntry) -> Sample:
    """Load one prepared layer's image and masks."""
    root = Path(root)
    return Sample(
        id=entry.id,
        image=read_layer(root / entry.image),
        weak=read_mask(root / entry.weak),
        truth=read_mask(root / entry.truth) if entry.truth else None,
        types=read_raw_labels(root / entry.types) if entry.types else None,
    )
