"""The prepared dataset: its files on disk, its manifest, its layers in memory, its split.

Layout (written by :func:`pbf_core.data.prepare.prepare_dataset` or the pipeline's data steps)::

    OUT/
      manifest.json        Manifest: source, format, channel views, one entry per kept layer
                           (files, size, powder-bed box)
      report.json          kept/dropped counts with reasons, label quality per method
      images/<id>.png      16-bit PNG, normalised to full range; grey (1 view) or RGB = views a, b, c
      weak/<id>.png        weak label, 8-bit 0/255
      truth/<id>.png       true defect mask, 8-bit 0/255 (only when the source has one)
      types/<id>.png       per-pixel defect type code (see DEFECT_TYPES), when the source names types

:class:`PreparedDataset` is what the pipeline steps hand each other: the directory, its content
digest and, once :func:`pbf_core.data.split.split_dataset` has run, the split every later step
uses.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from pbf_core.data.imaging import box_mask, read_layer, read_mask, read_raw_labels
from pbf_core.errors import DatasetError

if TYPE_CHECKING:
    from pbf_core.data.split import Split

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
    #: The powder bed (row start, row stop, column start, column stop), found on the views as
    #: stored (:func:`~pbf_core.data.imaging.bed_box`); None in datasets prepared before it.
    bed: tuple[int, int, int, int] | None = None


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
    bed: np.ndarray | None = None  # (H, W) bool powder bed, when the manifest has it


def load_sample(root: str | Path, entry: LayerEntry) -> Sample:
    """Load one prepared layer's image and masks."""
    root = Path(root)
    return Sample(
        id=entry.id,
        image=read_layer(root / entry.image),
        weak=read_mask(root / entry.weak),
        truth=read_mask(root / entry.truth) if entry.truth else None,
        types=read_raw_labels(root / entry.types) if entry.types else None,
        bed=box_mask((entry.height, entry.width), entry.bed) if entry.bed else None,
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
    """Load prepared layers into memory (see :func:`load_sample`)."""
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


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset on disk, identified by the digest of its layers' bytes.

    Attributes:
        name: dataset name (one MLflow experiment per name).
        path: the dataset directory.
        digest: SHA-256 over the ids and files of every kept layer (:func:`data_digest`).
        views: channel views, e.g. ``("a", "b", "c")`` or ``("image",)``.
        layers: number of kept layers.
        raw_digest: digest of the raw data it was prepared from, when known.
        report: the preparation report (``report.json``: counts, drop reasons, label quality).
        split: the train/val/test split every training, quantization and evaluation step uses
            (None until :func:`pbf_core.data.split.split_dataset` has run).
    """

    name: str
    path: Path
    digest: str
    views: tuple[str, ...]
    layers: int
    raw_digest: str | None = None
    report: Mapping[str, Any] = field(default_factory=dict, compare=False)
    split: Split | None = None

    @property
    def channels(self) -> int:
        return len(self.views)

    @functools.cached_property
    def manifest(self) -> Manifest:
        """``manifest.json``, read once per object (steps ask for entries many times)."""
        return load_manifest(self.path)

    def entries(self, ids: Sequence[str] | None = None) -> list[LayerEntry]:
        """Manifest entries of ``ids`` in that order (every layer when None).

        Raises:
            DatasetError: an id that is not a layer of this dataset.
        """
        layers = self.manifest.layers
        if ids is None:
            return list(layers)
        by_id = {e.id: e for e in layers}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DatasetError(
                self.path, f"{len(missing)} layer id(s) not in this dataset, e.g. {missing[0]!r}"
            )
        return [by_id[i] for i in ids]

    def samples(self, ids: Sequence[str] | None = None) -> list[Sample]:
        """The layers ``ids`` loaded into memory (see :func:`load_sample`)."""
        return load_samples(self.path, self.entries(ids))

    def with_split(self, split: Split) -> PreparedDataset:
        """This dataset carrying ``split``.

        Raises:
            DatasetError: the split names layers this dataset does not have (other data?).
        """
        self.entries([*split.train, *split.val, *split.test])
        return replace(self, split=split)

    def require_split(self) -> Split:
        """The split. Raises DatasetError when the dataset has not been split yet."""
        if self.split is None:
            raise DatasetError(self.path, "the dataset has no split yet; run the split step first")
        return self.split


def open_dataset(path: str | Path, name: str | None = None) -> PreparedDataset:
    """The prepared dataset in ``path`` (no split), digested.

    Raises:
        DatasetError: not a prepared dataset (no or invalid manifest).
    """
    root = Path(path)
    manifest = load_manifest(root)
    report_file = root / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    return PreparedDataset(
        name=name or root.name,
        path=root,
        digest=data_digest(root, manifest.layers),
        views=manifest.views,
        layers=len(manifest.layers),
        raw_digest=report.get("raw_digest"),
        report=report,
    )
