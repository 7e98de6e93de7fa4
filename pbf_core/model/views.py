"""A model's input views: fitting a triplet model to a printer that photographs one view.

A network trained on the a/b/c triplet takes three channels. Fed one image repeated in all
three, every convolution that reads the input sums its weights over those channels; summing them
once gives a single-view network with exactly the same outputs (:func:`single_view`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pbf_core.model.factory import model_from_spec
from pbf_core.model.spec import ModelSpec

if TYPE_CHECKING:
    import torch


def _fold(weight: torch.Tensor, shape: tuple[int, ...], channels: int) -> torch.Tensor:
    """Sum an input-reading weight's per-view blocks: ``[other, view × group]`` → ``[other, group]``.

    The input views are the last ``channels × group`` input channels of the layer, view-major
    (the encoder's stem: group 1; the shuffle head: 2×2 pixel blocks, group 4).
    """
    import torch

    old, new = weight.shape[1], shape[1]
    group = (old - new) // (channels - 1)
    other = old - group * channels
    if group < 1 or (old - new) % (channels - 1) or other + group != new:
        raise ValueError(f"cannot fold weights of shape {tuple(weight.shape)} into {shape}")
    views = weight[:, other:].reshape(weight.shape[0], channels, group, *weight.shape[2:])
    return torch.cat([weight[:, :other], views.sum(1)], dim=1)


def single_view(
    model: torch.nn.Module, spec: ModelSpec, view: str = "image"
) -> tuple[torch.nn.Module, ModelSpec]:
    """The single-view network that ``model`` is when fed one view in every channel.

    Returns ``model`` and ``spec`` unchanged when the model already takes one view.

    Raises:
        ValueError: an architecture whose input-reading weights do not fold (none known).
    """
    if spec.in_channels == 1:
        return model, spec
    folded_spec = spec.model_copy(update={"in_channels": 1, "views": (view,)})
    folded = model_from_spec(folded_spec)
    state, old = folded.state_dict(), model.state_dict()
    for key, value in state.items():
        w = old[key]
        state[key] = w if w.shape == value.shape else _fold(w, tuple(value.shape), spec.in_channels)
    folded.load_state_dict(state)
    return folded.to(next(model.parameters()).device).eval(), folded_spec
