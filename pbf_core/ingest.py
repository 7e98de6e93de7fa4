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
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from pbf_core.datasets import DEFECT_TYPES, TRIPLET_VIEWS, LayerRecord, RawSource
from pbf_core.errors import DatasetError, PbfError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

#: Refuse archives that would unpack to more than this (bytes).
MAX_UNZIPPED_BYTES = 20 * 1024**3
#: Refuse archive members compressed more than this ratio (real PNG/JPEG/TIFF layers compress
#: a few times at most; a zip bomb compresses by 1000x or more) ...
MAX_COMPRESSION_RATIO = 200
#: ... once they are at least this large, so a tiny blank test image is never refused.
_RATIO_CHECK_MIN_BYTES = 1024**2

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


class DownloadError(PbfError, RuntimeError):
    """An optional download could not run: missing extra, missing credentials or a remote error."""


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


def extract_zip(archive: str | Path, staging_dir: str | Path | None = None) -> Path:
    """Extract ``archive`` into a fresh directory, refusing unsafe archives.

    Args:
        archive: ``.zip`` file; never modified.
        staging_dir: parent of the fresh directory; default: the system temp directory.

    Returns:
        The fresh directory holding the extracted files.

    Raises:
        DatasetError: corrupt or encrypted archive, member paths that are absolute or climb out
            with ``..``, symlinks, or sizes/compression ratios that suggest a zip bomb.
    """
    archive = Path(archive)
    if staging_dir is not None:
        Path(staging_dir).mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            _check_members(archive, members)
            dest = Path(tempfile.mkdtemp(prefix=f"pbf-{archive.stem}-", dir=staging_dir))
            try:
                for info in members:
                    _extract_member(zf, info, dest, archive)
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
        raise DatasetError(archive, f"cannot extract archive ({exc})") from None
    return dest


def _check_members(archive: Path, members: list[zipfile.ZipInfo]) -> None:
    total = 0
    for info in members:
        name = info.filename
        parts = re.split(r"[\\/]", name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise DatasetError(archive, f"unsafe member path {name!r} (absolute or '..')")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(archive, f"member {name!r} is a symbolic link")
        if (
            info.file_size >= _RATIO_CHECK_MIN_BYTES
            and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
        ):
            ratio = info.file_size / max(info.compress_size, 1)
            raise DatasetError(
                archive,
                f"member {name!r} expands {ratio:.0f}x (limit {MAX_COMPRESSION_RATIO}x): "
                "refusing a likely zip bomb",
            )
        total += info.file_size
    if total > MAX_UNZIPPED_BYTES:
        raise DatasetError(
            archive,
            f"archive expands to {total / 1024**3:.1f} GiB "
            f"(limit {MAX_UNZIPPED_BYTES / 1024**3:.0f} GiB): refusing a likely zip bomb",
        )


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, archive: Path) -> None:
    target = dest.joinpath(*re.split(r"[\\/]", info.filename))
    if dest.resolve() not in target.resolve().parents:
        raise DatasetError(archive, f"unsafe member path {info.filename!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, target.open("wb") as dst:
        # Count what is actually written: a forged header must not let a member grow unbounded.
        while chunk := src.read(1024**2):
            written += len(chunk)
            if written > info.file_size:
                raise DatasetError(archive, f"member {info.filename!r} larger than its header says")
            dst.write(chunk)


def download_kaggle(
    dest: str | Path,
    dataset: str = "programmer3/process-monitoring-in-additive-manufacturing",
) -> Path:
    """Download a Kaggle dataset through ``kagglehub`` and copy it into ``dest/<dataset name>``.

    Only runs when asked: nothing in the pipeline downloads data by itself.

    Args:
        dest: directory to copy the dataset into (created).
        dataset: Kaggle handle ``owner/name``.

    Returns:
        The directory holding the downloaded files, ready for :func:`discover`.

    Raises:
        DownloadError: ``kagglehub`` not installed, credentials missing or refused, remote error.
    """
    try:
        import kagglehub
    except ImportError:
        raise DownloadError(
            "Kaggle download needs the optional dependency kagglehub: "
            "pip install 'pbf-defects[kaggle]'"
        ) from None
    try:
        cached = Path(kagglehub.dataset_download(dataset))
    except Exception as exc:  # kagglehub raises several unrelated types (HTTP, auth, env)
        hint = (
            ""
            if _has_kaggle_credentials()
            else (
                " No Kaggle credentials found: set KAGGLE_USERNAME and KAGGLE_KEY or put kaggle.json "
                "in ~/.kaggle (https://www.kaggle.com/settings, 'Create New Token')."
            )
        )
        raise DownloadError(f"Kaggle download of {dataset!r} failed: {exc}.{hint}") from exc
    target = Path(dest) / dataset.rsplit("/", 1)[-1]
    shutil.copytree(cached, target, dirs_exist_ok=True)
    return target


def _has_kaggle_credentials() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file()
