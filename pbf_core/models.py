"""Segmentation networks, the metadata that travels with their weights, and safe checkpoints.

A checkpoint is one safetensors file: the state dict's tensors plus, in the file's string
metadata under ``pbf_spec``, the :class:`ModelSpec` JSON (architecture, input views,
normalisation, tile size, decision threshold, training-data digest, metrics). Loading it never
unpickles anything, so a checkpoint from an untrusted source cannot run code.

``torch`` and ``segmentation_models_pytorch`` are imported inside the functions that need them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pbf_core.errors import PbfError

if TYPE_CHECKING:
    import torch

#: Key of the :class:`ModelSpec` JSON in a checkpoint's safetensors metadata.
SPEC_KEY = "pbf_spec"
SPEC_VERSION = 1
#: Spatial stride of the encoders: network inputs must be multiples of it.
OUTPUT_STRIDE = 32


class CheckpointError(PbfError, ValueError):
    """A checkpoint or weights file is missing, not safetensors, or does not fit the model."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelSpec(BaseModel):
    """Everything needed to use a trained model besides its weights.

    Attributes:
        arch, encoder, in_channels, classes, decoder_channels, head, head_width: rebuild the
            network (see :func:`create_model`).
        views: input channels in order, e.g. ``("a", "b", "c")`` or ``("image",)``.
        normalization, percentiles: how raw layers are mapped to [0, 1] per view (as in
            :class:`pbf_core.config.PrepareConfig`).
        tile_size, tile_overlap: inference tiles (px) stitched back at native resolution.
        threshold: decision threshold on the defect probability.
        labels: what the model was trained on (``weak`` labels or ``truth`` masks).
        train_data_digest: digest of the training data (layer ids and files), for lineage.
        created_at: UTC time the spec was written.
        metrics: held-out metrics at ``threshold`` (fractions, counts per image).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = SPEC_VERSION
    arch: str = "unet"
    encoder: str = "mobilenet_v2"
    in_channels: int = Field(3, ge=1, le=16)
    classes: int = Field(1, ge=1)
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    head: Literal["full", "shuffle"] = "shuffle"
    head_width: int = Field(32, ge=0)
    views: tuple[str, ...] = ("a", "b", "c")
    normalization: Literal["percentile", "minmax"] = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    tile_size: int = Field(256, ge=32)
    tile_overlap: int = Field(32, ge=0)
    threshold: float = Field(0.5, gt=0, lt=1)
    labels: Literal["weak", "truth"] = "weak"
    train_data_digest: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if len(self.views) != self.in_channels:
            raise ValueError(
                f"{len(self.views)} views {self.views} for {self.in_channels} channels"
            )
        if self.tile_size % OUTPUT_STRIDE:
            raise ValueError(
                f"tile_size must be a multiple of {OUTPUT_STRIDE}, got {self.tile_size}"
            )
        if self.tile_overlap >= self.tile_size // 2:
            raise ValueError(f"tile_overlap {self.tile_overlap} must be below half the tile")
        return self


def _valid_encoders() -> list[str]:
    import segmentation_models_pytorch as smp

    return sorted(smp.encoders.get_encoder_names())


def _check_names(arch: str, encoder: str) -> None:
    import segmentation_models_pytorch as smp

    archs = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
    if arch.lower() not in archs:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(archs)}")
    if encoder.startswith("tu-"):
        import timm

        if not timm.list_models(encoder[3:]):
            raise ValueError(f"unknown timm encoder {encoder!r} (no timm model {encoder[3:]!r})")
        return
    names = _valid_encoders()
    if encoder not in names:
        raise ValueError(
            f"unknown encoder {encoder!r}; valid: {', '.join(names)}, or tu-<timm model name>"
        )


def create_model(
    arch: str = "unet",
    encoder: str = "mobilenet_v2",
    in_channels: int = 3,
    classes: int = 1,
    encoder_weights: str | Path | None = None,
    decoder_channels: tuple[int, ...] | None = (128, 64, 32, 16, 8),
    head_width: int = 32,
    head: str = "shuffle",
) -> torch.nn.Module:
    """Build a segmentation network that outputs logits ``(N, classes, H, W)``.

    Args:
        arch: segmentation-models-pytorch architecture, e.g. ``unet``.
        encoder: encoder name, e.g. ``mobilenet_v2``, ``resnet18`` or ``tu-<timm model>``.
        in_channels: 1 (single image) or 3 (a/b/c triplet); any positive count works.
        classes: output channels (1 = defect logit).
        encoder_weights: ``None`` random init (never touches the network), ``"imagenet"``
            (downloads, only when asked), or a local ``.safetensors``/state-dict file holding the
            whole model's or only the encoder's weights.
        decoder_channels: U-Net decoder widths (``None`` = smp's default); ignored by
            architectures without this parameter.
        head_width: channels of a head that sees the decoder output *and the input pixels*;
            0 keeps smp's plain head.
        head: ``shuffle`` (U-Net only): the decoder stops at half resolution and the head
            works on pixel-unshuffled input there (:class:`pbf_core.networks.ShuffleHead`, the
            last ``decoder_channels`` entry is unused); ``full``: the head runs at full
            resolution after the whole decoder (:class:`pbf_core.networks.FullResolutionHead`).

    Raises:
        ValueError: unknown architecture or encoder (the valid names are listed).
        CheckpointError: the local weights file is missing, unreadable or does not fit.
    """
    import segmentation_models_pytorch as smp

    _check_names(arch, encoder)
    if in_channels < 1 or classes < 1:
        raise ValueError(f"in_channels and classes must be >= 1, got {in_channels}, {classes}")
    download = encoder_weights == "imagenet"
    kwargs = {}
    if decoder_channels is not None and arch.lower() in ("unet", "unetplusplus"):
        kwargs["decoder_channels"] = tuple(decoder_channels)
        kwargs["encoder_depth"] = len(decoder_channels)
    model = smp.create_model(
        arch,
        encoder_name=encoder,
        encoder_weights="imagenet" if download else None,
        in_channels=in_channels,
        classes=classes,
        **kwargs,
    )
    if encoder_weights is not None and not download:
        _load_initial_weights(model, Path(encoder_weights))
    if head not in ("full", "shuffle"):
        raise ValueError(f"unknown head {head!r}; valid: full, shuffle")
    if head_width and head == "shuffle" and arch.lower() == "unet":
        from pbf_core.networks import ShuffleHead

        model = ShuffleHead(model, in_channels, classes, head_width)
    elif head_width:
        from pbf_core.networks import FullResolutionHead

        model = FullResolutionHead(model, in_channels, classes, head_width)
    return model


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file ({exc})") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a ``torch.save``d state dict, without unpickling code."""
    import torch

    if not path.is_file():
        raise CheckpointError(path, "weights file not found")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(path, f"not a tensor-only state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "expected a mapping of parameter names to tensors")
    return state


def _load_initial_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a whole-model or encoder-only state dict; every encoder tensor must be present."""
    # a whole-model file of ours wraps the smp model as ``base`` (FullResolutionHead)
    state = {k.removeprefix("base."): v for k, v in _read_state_dict(path).items()}
    if any(k.startswith("encoder.") for k in state):
        target, state = model, {k: v for k, v in state.items() if k in model.state_dict()}
        needed = {k for k in model.state_dict() if k.startswith("encoder.")}
    else:
        target = model.encoder
        needed = set(model.encoder.state_dict())
    missing = sorted(needed - set(state))
    if missing:
        raise CheckpointError(
            path, f"{len(missing)} encoder tensors missing, e.g. {', '.join(missing[:3])}"
        )
    try:
        target.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(path, f"weights do not fit the model ({exc})") from None


def model_from_spec(spec: ModelSpec) -> torch.nn.Module:
    """A randomly initialised network with the architecture described by ``spec``."""
    return create_model(
        spec.arch,
        spec.encoder,
        in_channels=spec.in_channels,
        classes=spec.classes,
        decoder_channels=spec.decoder_channels,
        head_width=spec.head_width,
        head=spec.head,
    )


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
