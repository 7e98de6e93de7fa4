"""The training loss: weighted BCE plus a batch-level soft Dice."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def dice_bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    pos_weight: float = 1.0,
    dice_weight: float = 1.0,
    valid: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE (defect pixels weighted ``pos_weight``) + ``dice_weight`` × soft Dice loss.

    The Dice term is computed over the whole batch (not per patch), so patches without defects
    do not push towards an empty prediction with a Dice of 0/0.

    Args:
        logits, target: ``(N, 1, H, W)`` float; target in {0, 1}.
        valid: optional ``(N, 1, H, W)`` {0, 1} mask of the pixels that count (pseudo-labels
            leave the doubtful ones out); every pixel counts when None.
        weight: optional ``(N, 1, H, W)`` per-pixel BCE weights (small defects weigh more, see
            :class:`~pbf_core.model.patches.PatchDataset`); the BCE stays a mean over the
            pixels that count, and the Dice term does not see them.
    """
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits

    logits = logits.float()
    pos = torch.tensor(pos_weight, device=logits.device)
    if valid is None and weight is None:
        bce = binary_cross_entropy_with_logits(logits, target, pos_weight=pos)
        prob = torch.sigmoid(logits)
    else:
        counts = None if valid is None else valid.float()
        if counts is not None and weight is not None:
            weight = counts * weight
        per_pixel = binary_cross_entropy_with_logits(
            logits, target, weight=counts if weight is None else weight, pos_weight=pos,
            reduction="sum",
        )  # fmt: skip
        bce = per_pixel / (target.numel() if counts is None else counts.sum().clamp(min=1.0))
        prob = torch.sigmoid(logits)
        if counts is not None:
            prob, target = prob * counts, target * counts
    if dice_weight == 0:
        return bce
    inter = (prob * target).sum()
    dice = 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)
    return bce + dice_weight * dice
