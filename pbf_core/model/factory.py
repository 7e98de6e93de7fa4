"""Build a segmentation network by name (segmentation-models-pytorch architectures and encoders,
with our heads), from scratch, from a local weights file, or from a spec.

An unknown architecture or encoder is an error that lists the valid names. ``torch`` and
``segmentation_models_pytorch`` are imported inside the functions that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
from pbf_core.errors import CheckpointError
from pbf_core.model.spec import ModelSpec
from pbf_core.model.weights import _read_state_dict


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
            works on pixel-unshuffled input there (:class:`pbf_core.model.networks.ShuffleHead`, the
            last ``decoder_channels`` entry is unused); ``full``: the head runs at full
            resolution after the whole decoder (:class:`pbf_core.model.networks.FullResolutionHead`).

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
    return _with_head(model, arch, head, head_width, in_channels, classes)


def _with_head(
    model: torch.nn.Module, arch: str, head: str, width: int, in_channels: int, classes: int
) -> torch.nn.Module:
    """Our head around an smp model (``width`` 0: smp's own head)."""
    from pbf_core.model.networks import FullResolutionHead, ShuffleHead

    if head not in ("full", "shuffle"):
        raise ValueError(f"unknown head {head!r}; valid: full, shuffle")
    if width and head == "shuffle" and arch.lower() == "unet":
        return ShuffleHead(model, in_channels, classes, width)
    if width:
        return FullResolutionHead(model, in_channels, classes, width)
    return model


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
