"""Typed errors. Each carries the offending path, layer, variant or field so a user can act on it."""

from __future__ import annotations

from pathlib import Path


class PbfError(Exception):
    """Base class of every error this library raises on purpose."""


class SubjectError(PbfError):
    """An error about one thing: ``subject`` (a file, a layer, a model variant) and ``reason``.

    The message reads ``<subject>: <reason>``.
    """

    def __init__(self, subject: str | Path, reason: str) -> None:
        self.subject = str(subject)
        self.reason = reason
        super().__init__(f"{self.subject}: {reason}")

    @property
    def path(self) -> str:
        """The subject, for errors about a file or directory."""
        return self.subject


class ImageReadError(SubjectError, ValueError):
    """An image file could not be used: missing, empty, corrupt, truncated, too large, wrong mode."""


class LayerSetError(SubjectError, ValueError):
    """A layer set (a/b/c triplet or single image + mask) is inconsistent, e.g. sizes differ."""

    def __init__(self, layer_id: str, reason: str) -> None:
        self.layer_id = layer_id
        super().__init__(f"layer {layer_id}", reason)


class DatasetError(SubjectError, ValueError):
    """A dataset directory or archive is missing, empty or of an unknown layout."""


class CheckpointError(SubjectError, ValueError):
    """A checkpoint or weights file is missing, not safetensors, or does not fit the model."""


class ExportError(SubjectError, ValueError):
    """An ONNX file could not be written, read, or does not match its PyTorch model."""


class QuantizationError(SubjectError, ValueError):
    """Calibration data or a model file cannot be used for quantization."""
