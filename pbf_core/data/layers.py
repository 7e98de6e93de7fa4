"""What a raw layer is before anything is read: its files, its views, the defect vocabulary.

Ingest (:mod:`pbf_core.data.ingest`) finds :class:`LayerRecord` s; filtering reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: Defect types, shared by the synthetic generator and the am04 annotations. Code = index + 1.
DEFECT_TYPES: tuple[str, ...] = ("hole", "horizontal", "incandescence", "spattering", "vertical")

TRIPLET_VIEWS: tuple[str, ...] = ("a", "b", "c")


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
