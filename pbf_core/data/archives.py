"""Raw data that arrives packed: zip archives extracted safely, and the Kaggle download.

Extraction refuses members that escape the target directory, links, and archives that would
unpack to more than :data:`MAX_UNZIPPED_BYTES` or compress suspiciously well (zip bombs).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

from pbf_core.errors import DatasetError, PbfError

#: Refuse archives that would unpack to more than this (bytes).
MAX_UNZIPPED_BYTES = 20 * 1024**3
#: Refuse archive members compressed more than this ratio (real PNG/JPEG/TIFF layers compress
#: a few times at most; a zip bomb compresses by 1000x or more) ...
MAX_COMPRESSION_RATIO = 200
#: ... once they are at least this large, so a tiny blank test image is never refused.
_RATIO_CHECK_MIN_BYTES = 1024**2


class DownloadError(PbfError, RuntimeError):
    """An optional download could not run: missing extra, missing credentials or a remote error."""


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
