"""Recognise raw layer datasets and list their layer sets; raw files are only ever read.

Layouts, in order of precedence (the first that matches wins):

``synthetic``
    A build written by ``pbf synth``: ``manifest.json`` with ``"generator": "pbf-synth"``,
    ``images/B0001a.PNG`` … triplets, ``truth/B0001.png`` true masks (``types/B0001.png`` beside
    them is read by :mod:`pbf_core.filtering`). The manifest only identifies the layout: noise
    frames are found by the filter from the files themselves, as they would be in real data.
``am04``
    ``Defects/ImageN/ImageN.jpg`` with per-instance masks
    ``DefectsMasks/ImageN/ImageN_PD_<kk>_<Type>.png`` and defect-free ``NoDefects/ImageN.jpg``
    (the directory holding ``Defects`` may sit up to two levels below the given path).
``kaggle``
    a/b/c triplets ``<id>a.png``, ``<id>b.png``, ``<id>c.png`` anywhere below the directory, the
    Kaggle "process monitoring in additive manufacturing" naming; optional ``truth/<id>.png``.
``folder``
    single images in ``images/`` (or in the directory itself) with optional masks
    ``masks/<stem>.<ext>`` or ``<stem>_mask.<ext>`` beside the image.

A ``.zip`` of any of these is extracted into a fresh staging directory first (never next to the
raw data), refusing path traversal and decompression bombs.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path

from pbf_core.data.archives import extract_zip
from pbf_core.data.layers import DEFECT_TYPES, TRIPLET_VIEWS, LayerRecord, RawSource
from pbf_core.errors import DatasetError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

SYNTH_GENERATOR = "pbf-synth"

# ``B0001a``: an id ending in a digit, then the view letter. Requiring the digit keeps ordinary
# words ending in a/b/c ("data.png") from being read as a view of layer "dat".
_TRIPLET_STEM = re.compile(r"^(?P<id>[A-Za-z0-9_\-]*\d)(?P<view>[abcABC])$")
_AM04_INSTANCE = re.compile(r"^(?P<image>.+)_PD_(?P<k>\d+)_(?P<type>[A-Za-z]+)$")
_AM04_UNION = re.compile(r"^.+_Mask_\d+$")
_MASK_SUFFIX = "_mask"

_LOOKED_FOR = (
    "a synthetic build (manifest.json with generator 'pbf-synth'), the am04 layout "
    "(Defects/ + DefectsMasks/), Kaggle triplets (<id>a/b/c.png anywhere below) or a folder of "
    "images (images/ or the folder itself, masks in masks/ or <stem>_mask.png)"
)


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``Image2`` < ``Image10``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower())
        for part in re.split(r"(\d+)", text)
        if part
    )


def discover(path: str | Path, *, staging_dir: str | Path | None = None) -> RawSource:
    """Recognise a raw dataset and list its layer sets without reading any pixel.

    Args:
        path: dataset directory or ``.zip`` archive. Never modified.
        staging_dir: where a ``.zip`` is extracted (a fresh sub-directory is created inside it);
            default: a new temporary directory, which the caller owns and may delete once the
            records are consumed (its path is ``RawSource.root``).

    Returns:
        The source with records in natural order of ``layer_id`` and the files that belong to no
        layer set in ``unmatched`` as ``(path relative to root, reason)``.

    Raises:
        DatasetError: missing path, empty directory, unknown layout, or an unsafe/corrupt archive.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "not found")
    if path.is_file():
        if path.suffix.lower() != ".zip" and not zipfile.is_zipfile(path):
            raise DatasetError(path, "not a directory or a .zip archive")
        extracted = extract_zip(path, staging_dir)
        try:
            return discover(_unwrap(extracted))
        except DatasetError as exc:
            shutil.rmtree(extracted, ignore_errors=True)
            raise DatasetError(path, f"archive content: {exc.reason}") from None
    if not path.is_dir():
        raise DatasetError(path, "not a directory or a .zip archive")

    files = sorted(_listed_files(path), key=lambda p: natural_key(p.as_posix()))
    if not files:
        raise DatasetError(path, "empty directory (no files)")
    if _is_synthetic(path):
        return _triplet_source(path, files, fmt="synthetic")
    am04_root = _find_am04_root(path)
    if am04_root is not None:
        return _am04_source(path, am04_root, files)
    if any(_parse_triplet(p) for p in files):
        return _triplet_source(path, files, fmt="kaggle")
    source = _folder_source(path, files)
    if source is not None:
        return source
    raise DatasetError(path, f"no recognised raw layout; looked for {_LOOKED_FOR}")


def _unwrap(root: Path) -> Path:
    """The single top-level folder of an extracted archive, if that is all it holds."""
    entries = [e for e in root.iterdir() if not e.name.startswith(".") and e.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


def _listed_files(root: Path) -> Iterable[Path]:
    """Regular files below ``root``, skipping hidden files and macOS archive metadata."""
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        # "__MACOSX/._B0001a.PNG" would otherwise parse as a triplet view.
        if any(part.startswith(".") or part == "__MACOSX" for part in rel):
            continue
        if p.is_file():
            yield p


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _rel(p: Path, root: Path) -> str:
    return p.relative_to(root).as_posix()


def _parse_triplet(p: Path) -> tuple[str, str] | None:
    if not _is_image(p):
        return None
    m = _TRIPLET_STEM.match(p.stem)
    return (m["id"], m["view"].lower()) if m else None


def _is_synthetic(root: Path) -> bool:
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("generator") == SYNTH_GENERATOR


def _triplet_source(root: Path, files: list[Path], fmt: str) -> RawSource:
    """Group ``<id><view>`` images into a/b/c records; ``truth/<id>.*`` attaches a true mask."""
    label_dirs = {root / "truth", root / "types"}
    views: dict[str, dict[str, Path]] = {}
    labels: dict[Path, list[Path]] = {d: [] for d in label_dirs}
    unmatched: list[tuple[str, str]] = []
    for p in files:
        if p.parent in label_dirs and _is_image(p):
            labels[p.parent].append(p)
            continue
        if fmt == "synthetic" and p == root / "manifest.json":
            continue
        if not _is_image(p):
            unmatched.append((_rel(p, root), "not an image file"))
            continue
        parsed = _parse_triplet(p)
        if parsed is None:
            unmatched.append((_rel(p, root), "name is not <id><a|b|c>.<ext> (e.g. B0001a.png)"))
            continue
        layer_id, view = parsed
        seen = views.setdefault(layer_id, {})
        if view in seen:
            unmatched.append(
                (_rel(p, root), f"duplicate view {view} of {layer_id} ({_rel(seen[view], root)})")
            )
            continue
        seen[view] = p

    truths: dict[str, Path] = {}
    for p in labels[root / "truth"]:
        if p.stem in views and p.stem not in truths:
            truths[p.stem] = p
        else:
            unmatched.append((_rel(p, root), "true mask without layer images (or duplicate)"))
    for p in labels[root / "types"]:
        if p.stem not in truths:
            unmatched.append((_rel(p, root), "type map without a true mask"))

    records = [
        LayerRecord(
            layer_id=lid,
            views={v: views[lid].get(v) for v in TRIPLET_VIEWS},
            truth=truths.get(lid),
        )
        for lid in sorted(views, key=natural_key)
    ]
    return RawSource(root=root, format=fmt, records=records, unmatched=unmatched)


def _find_am04_root(root: Path, depth: int = 2) -> Path | None:
    """The directory holding ``Defects/`` and ``DefectsMasks/``: ``root`` or up to ``depth`` below."""
    level = [root]
    for _ in range(depth + 1):
        for d in level:
            if (d / "Defects").is_dir() and (d / "DefectsMasks").is_dir():
                return d
        level = sorted(
            (c for d in level for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")),
            key=lambda p: natural_key(p.as_posix()),
        )
    return None


def _am04_source(root: Path, base: Path, files: list[Path]) -> RawSource:
    """am04: one record per defect image with its instance masks, one per defect-free image."""
    defects, no_defects, masks = base / "Defects", base / "NoDefects", base / "DefectsMasks"
    images: dict[str, Path] = {}
    free: dict[str, Path] = {}
    instances: dict[str, list[tuple[int, str, Path]]] = {}
    unmatched: list[tuple[str, str]] = []
    for p in files:
        rel = _rel(p, root)
        if not _is_image(p):
            unmatched.append((rel, "not an image file"))
        elif p.parent.parent == defects and p.stem == p.parent.name:
            images[p.stem] = p
        elif p.parent == no_defects:
            free[f"NoDefects_{p.stem}"] = p
        elif p.parent.parent == masks:
            m = _AM04_INSTANCE.match(p.stem)
            if m is None:
                # ImageN_Mask_00 is upstream's union of the instance masks without Spattering:
                # derived data, so the instances are used instead and it is not reported.
                if not _AM04_UNION.match(p.stem):
                    unmatched.append((rel, "mask name is not <image>_PD_<kk>_<Type>.png"))
                continue
            # am04 names its types Hole, Horizontal, ...: the DEFECT_TYPES names capitalised.
            kind = m["type"].lower()
            if kind not in DEFECT_TYPES:
                known = ", ".join(t.capitalize() for t in DEFECT_TYPES)
                unmatched.append((rel, f"unknown defect type {m['type']!r} (known: {known})"))
                continue
            instances.setdefault(m["image"], []).append((int(m["k"]), kind, p))
        else:
            unmatched.append((rel, "not part of the am04 layout"))

    for image_id, items in instances.items():
        if image_id not in images:
            for _, _, p in items:
                unmatched.append((_rel(p, root), f"instance mask without image {image_id}"))
    records = [
        LayerRecord(
            layer_id=lid,
            views={"image": p},
            instances=tuple((kind, m) for _, kind, m in sorted(instances.get(lid, ()))),
        )
        for lid, p in images.items()
    ]
    records += [
        LayerRecord(layer_id=lid, views={"image": p}, no_defects=True) for lid, p in free.items()
    ]
    records.sort(key=lambda r: natural_key(r.layer_id))
    unmatched.sort(key=lambda u: natural_key(u[0]))
    return RawSource(root=root, format="am04", records=records, unmatched=unmatched)


def _folder_source(root: Path, files: list[Path]) -> RawSource | None:
    """Single images in ``images/`` (else ``root``) with masks in ``masks/`` or ``<stem>_mask``."""
    image_dir = root / "images" if (root / "images").is_dir() else root
    mask_dir = root / "masks"
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    unmatched: list[tuple[str, str]] = []
    rest: list[Path] = []
    for p in files:
        is_mask = p.parent == mask_dir or p.stem.lower().endswith(_MASK_SUFFIX)
        if not _is_image(p) or p.parent not in (image_dir, mask_dir):
            rest.append(p)
        elif is_mask:
            stem = p.stem if p.parent == mask_dir else p.stem[: -len(_MASK_SUFFIX)]
            if stem in masks:
                unmatched.append((_rel(p, root), f"duplicate mask for {stem}"))
            else:
                masks[stem] = p
        elif p.stem in images:
            unmatched.append((_rel(p, root), f"duplicate layer id {p.stem}"))
        else:
            images[p.stem] = p
    if not images:
        return None
    where = _rel(image_dir, root) if image_dir != root else "."
    for p in rest:
        reason = "not an image file" if not _is_image(p) else f"image outside {where}/"
        unmatched.append((_rel(p, root), reason))
    for stem, p in masks.items():
        if stem not in images:
            unmatched.append((_rel(p, root), "mask without an image"))
    records = [
        LayerRecord(layer_id=stem, views={"image": p}, truth=masks.get(stem))
        for stem, p in sorted(images.items(), key=lambda kv: natural_key(kv[0]))
    ]
    unmatched.sort(key=lambda u: natural_key(u[0]))
    return RawSource(root=root, format="folder", records=records, unmatched=unmatched)
