"""Inference benchmark of model variants: latency, throughput, size on disk, peak memory, parity.

Each variant is measured in its own fresh Python process (:func:`run_worker`), so one runtime's
thread pools, allocator caches and imports never weigh on another's numbers, and its peak resident
memory is its own. A worker records its resident set after importing its runtime and before loading
the model, then its peak (Linux ``VmHWM``) after the timed runs, the largest being batch 8 at the
largest side: the difference is what the model and its activations cost. With ``rounds > 1`` the
variants are measured in rotation several times and each keeps its round with the lowest batch-1
p50 at the first side (all of that round's numbers), which damps bursts of load from other
processes on a shared machine; the load average before and after is recorded beside the numbers.

Only the standard library and numpy are imported at module level; each worker imports the one
runtime (``torch`` or ``onnxruntime``) its variant needs.
"""

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
