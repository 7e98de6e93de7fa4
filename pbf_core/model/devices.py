"""Which torch device and numeric precision a run uses, chosen explicitly or automatically.

``torch`` is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Literal

from pbf_core.errors import SubjectError

if TYPE_CHECKING:
    import torch

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class DeviceError(SubjectError, ValueError):
    """The requested device or precision is not available on this machine."""

    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        super().__init__(f"device {device!r}", reason)


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA if present, else Apple MPS, else CPU; a named device must exist.

    Accepts ``cuda:N`` for a specific GPU.

    Raises:
        DeviceError: unknown name, or the asked device is absent (the message says what is
            available).
    """
    import torch

    base = name.split(":", 1)[0]
    if base not in ("auto", "cpu", "cuda", "mps"):
        raise DeviceError(name, "unknown device; valid: auto, cpu, cuda, cuda:N, mps")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if base == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else "no CUDA GPU visible"
            raise DeviceError(name, f"CUDA is not available ({built}); use --device cpu or auto")
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(name, f"only {torch.cuda.device_count()} CUDA device(s) visible")
    if base == "mps" and not _mps_available():
        raise DeviceError(name, "Apple MPS is not available on this machine; use cpu or auto")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), where autocast pays off."""
    import torch

    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``device``, or None for plain float32.

    ``auto``: bf16 on CUDA GPUs that support it (else fp16) and on CPUs with native bf16; fp32
    on MPS and on other CPUs, where bf16 is emulated and slower (on CPUs with native bf16 it
    shortened both a training step and a layer's tiled inference by about a quarter or more).

    Raises:
        DeviceError: fp16 asked on CPU/MPS, or bf16 on a GPU without bf16.
    """
    import torch

    kind = device.type
    if precision == "fp32":
        return None
    if precision == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if kind == "cpu" and cpu_has_bf16() else None
    if precision == "bf16":
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise DeviceError(str(device), "this GPU has no bf16; use fp16 or fp32")
        if kind == "mps":
            raise DeviceError(str(device), "bf16 autocast is not supported on MPS; use fp32")
        return torch.bfloat16
    if precision == "fp16":
        if kind != "cuda":
            raise DeviceError(
                str(device), "fp16 mixed precision needs a CUDA GPU; use bf16 or fp32"
            )
        return torch.float16
    raise DeviceError(
        str(device), f"unknown precision {precision!r}; valid: auto, fp32, bf16, fp16"
    )


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast context for ``dtype`` on ``device`` (a no-op for float32)."""
    import torch

    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (None: unchanged), then restore.

    When other jobs share the cores, one thread can be several times faster than two: OpenMP
    threads wait for each other at every operator while the other jobs hold the cores.
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
