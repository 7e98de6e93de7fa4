"""Typed errors. Each carries the offending path or field so a user can act on it."""

from __future__ import annotations

from pathlib import Path


class PbfError(Exception):
    """Base class of every error this library raises on purpose."""


class ImageReadError(PbfError, ValueError):
    """An image file could not be used: missing, empty, corrupt, truncated, too large, wrong mode."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class LayerSetError(PbfError, ValueError):
    """A layer set (a/b/c triplet or single image + mask) is inconsistent, e.g. sizes differ."""

    def __init__(self, layer_id: str, reason: str) -> None:
        self.layer_id = layer_id
        self.reason = reason
        super().__init__(f"layer {layer_id}: {reason}")


class DatasetError(PbfError, ValueError):
    """A dataset directory or archive is missing, empty or of an unknown layout."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(PbfError, ValueError):
    """A checkpoint or weights file is missing, not safetensors, or does not fit the model."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ExportError(PbfError, ValueError):
    """An ONNX file could not be written, read, or does not match its PyTorch model."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class QuantizationError(PbfError, ValueError):
    """Calibration data or a model file cannot be used for quantization."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
