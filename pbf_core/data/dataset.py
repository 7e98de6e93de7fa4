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

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from pbf_core.data.imaging import read_layer, read_mask, read_raw_labels
from pbf_core.errors import DatasetError

MANIFEST_VERSION = 1


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


def data_digest(root: str | Path, entries: Sequence[LayerEntry]) -> str:
    """SHA-256 over the ids and file bytes of ``entries`` (image, weak, truth), for lineage."""
    root = Path(root)
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.id):
        h.update(e.id.encode())
        for rel in (e.image, e.weak, e.truth):
            if rel:
                h.update(rel.encode())
                h.update((root / rel).read_bytes())
    return h.hexdigest()


def load_samples(root: str | Path, entries: Sequence[LayerEntry]) -> list[Sample]:
    """Load prepared layers into memory (see :func:`pbf_core.datasets.load_sample`)."""
    return [load_sample(root, e) for e in entries]


def target_of(sample: Sample, labels: Literal["weak", "truth"]) -> np.ndarray:
    """The ``(H, W)`` bool training target of a sample: its weak label or its true mask.

    Raises:
        ValueError: ``truth`` asked for a layer without a true mask.
    """
    if labels == "weak":
        return sample.weak
    if labels == "truth":
        if sample.truth is None:
            raise ValueError(f"layer {sample.id} has no true mask; train with labels=weak")
        return sample.truth
    raise ValueError(f"unknown labels {labels!r}; valid: weak, truth")
