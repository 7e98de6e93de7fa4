"""The served model: its ONNX file, its spec and what answers report about it.

Built from a packaged model's metadata (the BentoML model ``tasks.packaging.package_onnx`` writes)
or from a registry version's downloaded file; ``service.py`` fetches either and hands the files
and metadata here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbf_core.deploy.metadata import read_onnx_spec
from pbf_core.model.spec import ModelSpec


class ModelNotReadyError(RuntimeError):
    """The model is not loaded (yet); carries the last loading error."""


@dataclass(frozen=True)
class ServedModel:
    """The ONNX file served, its spec (from the file's metadata) and what answers report.

    ``info`` holds ``name``, ``version``, ``variant``, ``source``, ``bento_model`` and
    ``data_digest`` (and ``runtime`` once opened).
    """

    path: Path
    spec: ModelSpec
    info: dict[str, Any]


def packaged_model(root: Path, tag: str, metadata: Mapping[str, Any], variant: str) -> ServedModel:
    """The ``variant``'s file in a packaged model.

    Args:
        root: the packaged model's directory.
        tag: its ``name:version`` tag.
        metadata: its metadata (``variants``: ``{variant: {"file", "version"}}``,
            ``registry_name``, ``source``, ``data_digest``).
        variant: ``int8`` or ``fp32``.

    Raises:
        ModelNotReadyError: the package has no such variant.
    """
    variants = metadata.get("variants", {})
    if variant not in variants:
        raise ModelNotReadyError(f"{tag} has no {variant} variant (has {', '.join(variants)})")
    entry = variants[variant]
    path = Path(root) / entry["file"]
    name, _, version = tag.partition(":")
    info = {
        "name": metadata.get("registry_name", name),
        "version": entry.get("version") or version,
        "variant": variant,
        "source": metadata.get("source"),
        "bento_model": tag,
        "data_digest": metadata.get("data_digest"),
    }
    return ServedModel(path, read_onnx_spec(path), info)


def registered_model(
    path: Path, registry_name: str, version: str, alias: str, variant: str
) -> ServedModel:
    """A registry version's downloaded ONNX file, reached through ``alias``."""
    spec = read_onnx_spec(path)
    info = {
        "name": registry_name,
        "version": version,
        "variant": variant,
        "source": f"models:/{registry_name}@{alias}",
        "bento_model": None,
        "data_digest": spec.train_data_digest,
    }
    return ServedModel(Path(path), spec, info)
