"""Checkpoints: one safetensors file with the weights and, in its metadata, the model's spec.

The :class:`~pbf_core.model.spec.ModelSpec` JSON sits under ``pbf_spec`` in the file's string
metadata. Loading never unpickles anything, so a checkpoint from an untrusted source cannot run
code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
from pbf_core.errors import CheckpointError
from pbf_core.model.factory import model_from_spec
from pbf_core.model.spec import ModelSpec
from pbf_core.model.weights import _load_safetensors

#: Key of the :class:`ModelSpec` JSON in a checkpoint's safetensors metadata.
SPEC_KEY = "pbf_spec"


def save_checkpoint(path: str | Path, model: torch.nn.Module, spec: ModelSpec) -> Path:
    """Write the model's weights and ``spec`` into one safetensors file (atomically).

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={SPEC_KEY: spec.model_dump_json()})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_spec(path: str | Path) -> ModelSpec:
    """The :class:`ModelSpec` stored in a checkpoint, without reading its tensors.

    Raises:
        CheckpointError: missing file, not safetensors, or no/invalid spec.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a safetensors checkpoint ({exc})") from None
    if SPEC_KEY not in meta:
        raise CheckpointError(path, f"no {SPEC_KEY!r} metadata: not a pbf model checkpoint")
    try:
        raw = json.loads(meta[SPEC_KEY])
        if isinstance(raw, dict):
            raw.setdefault("head", "full")  # written before the shuffle head existed
        return ModelSpec.model_validate(raw)
    except ValueError as exc:
        raise CheckpointError(path, f"invalid model spec ({exc})") from None


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ModelSpec]:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint`, in eval mode.

    Raises:
        CheckpointError: missing/corrupt file, no spec, or tensors that do not fit the spec.
    """
    spec = read_spec(path)
    model = model_from_spec(spec)
    state = _load_safetensors(Path(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            path, f"weights do not match the spec's architecture ({exc})"
        ) from None
    return model.to(device).eval(), spec
