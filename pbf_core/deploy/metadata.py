"""The ``pbf.*`` metadata of an ONNX file: the model spec, threshold and parity travel with it.

Everything needed to use the file (views, normalisation, tile size, decision threshold,
training-data digest) is stored in the file's ``metadata_props`` as JSON values, so a served
prediction never depends on a constant kept elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from pbf_core.model.spec import ModelSpec
from pbf_core.errors import ExportError

METADATA_PREFIX = "pbf."


def set_metadata(proto: onnx.ModelProto, metadata: Mapping[str, Any]) -> None:
    """Add or replace ``pbf.<key>`` entries of ``proto.metadata_props``, values stored as JSON."""
    entries = {p.key: p.value for p in proto.metadata_props}
    for key, value in metadata.items():
        entries[METADATA_PREFIX + key] = json.dumps(value)
    del proto.metadata_props[:]
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read the ``pbf.*`` metadata of an ONNX file, JSON values decoded, prefix stripped.

    Raises:
        ExportError: missing or unreadable file.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(path, "ONNX file not found")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(path, f"not a readable ONNX file: {exc}") from exc
    if not proto.graph.node:
        # protobuf parses an empty file as an empty model
        raise ExportError(path, "not an ONNX model (no graph)")
    out: dict[str, Any] = {}
    for prop in proto.metadata_props:
        if prop.key.startswith(METADATA_PREFIX):
            try:
                out[prop.key[len(METADATA_PREFIX) :]] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[prop.key[len(METADATA_PREFIX) :]] = prop.value
    return out


def read_onnx_spec(path: str | Path) -> ModelSpec:
    """The :class:`~pbf_core.models.ModelSpec` an ONNX file carries in its ``pbf.*`` metadata.

    Raises:
        ExportError: missing or unreadable file, no spec in the metadata, or an invalid one.
    """
    from pbf_core.model.spec import ModelSpec

    meta = read_metadata(path)
    fields = {k: v for k, v in meta.items() if k in ModelSpec.model_fields}
    if "arch" not in fields:
        raise ExportError(path, "no pbf.* model spec in the ONNX metadata")
    try:
        return ModelSpec.model_validate(fields)
    except ValueError as exc:
        raise ExportError(path, f"invalid model spec in the metadata ({exc})") from None


def spec_metadata(spec: Any, variant: str) -> dict[str, Any]:
    """ONNX metadata of a model: every :class:`~pbf_core.models.ModelSpec` field plus ``variant``.

    The spec's fields are stored flat (``pbf.threshold``, ``pbf.views``, ``pbf.tile_size``,
    ``pbf.train_data_digest``…) so :meth:`pbf_core.inference.Segmenter.from_onnx` rebuilds the
    spec from the file alone.
    """
    return {**spec.model_dump(mode="json"), "variant": variant}
