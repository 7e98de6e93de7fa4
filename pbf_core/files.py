"""Files every stage writes or keys results by: atomic JSON, content digests, code digests."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType


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


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_digest(modules: Iterable[ModuleType]) -> str:
    """SHA-256 over the source files of modules and packages (a package: every ``.py`` in it).

    Part of the cache key of a result made by that code, so a change to, say, the labelling
    code never reuses layers prepared by the old one.
    """
    files: set[Path] = set()
    for module in modules:
        paths = getattr(module, "__path__", None)
        if paths:
            files.update(p for root in paths for p in Path(root).rglob("*.py"))
        elif module.__file__:
            files.add(Path(module.__file__))
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
