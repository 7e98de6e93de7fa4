"""What a benchmark ran on: CPU, cores, OS, Python and runtime versions, load average."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model, core count, OS, Python and runtime versions, current load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("torch", "onnxruntime", "onnx", "segmentation_models_pytorch"):
        try:
            from importlib.metadata import version

            versions[mod] = version(
                mod if mod != "segmentation_models_pytorch" else "segmentation-models-pytorch"
            )
        except Exception:
            versions[mod] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB); importable, so Dask workers can run it."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
