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
from pathlib import Path


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
