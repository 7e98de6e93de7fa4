"""What a benchmark or a training ran on: CPU, cores, OS, Python, library versions, load."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: Runtimes a benchmark reports (distribution names).
RUNTIMES = ("torch", "onnxruntime", "onnx", "segmentation-models-pytorch")
#: What decides the weights a training run ends with, besides the code, data and config: the
#: numerics (torch, numpy) and every library that draws patches or augmentations.
TRAINING_LIBRARIES = (
    "torch", "numpy", "opencv-python-headless", "albumentations", "segmentation-models-pytorch",
    "timm", "scipy",
)  # fmt: skip


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def training_environment() -> dict[str, Any]:
    """What besides code, data and config decides a training run's weights: Python, the CPU
    kernels torch picked and :data:`TRAINING_LIBRARIES` (torch with its local tag: +cpu, ...)."""
    import torch

    return {
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **package_versions(TRAINING_LIBRARIES),
        "torch": torch.__version__,
    }


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
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": package_versions(RUNTIMES),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB); importable, so Dask workers can run it."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
