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
) -> torch.Tensor:
    """BCE (defect pixels weighted ``pos_weight``) + ``dice_weight`` × soft Dice loss.

    The Dice term is computed over the whole batch (not per patch), so patches without defects
    do not push towards an empty prediction with a Dice of 0/0.

    Args:
        logits, target: ``(N, 1, H, W)`` float; target in {0, 1}.
        valid: optional ``(N, 1, H, W)`` {0, 1} mask of the pixels that count (pseudo-labels
            leave the doubtful ones out); every pixel counts when None.
    """
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits

    logits = logits.float()
    weight = torch.tensor(pos_weight, device=logits.device)
    if valid is None:
        bce = binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
        prob = torch.sigmoid(logits)
    else:
        valid = valid.float()
        per_pixel = binary_cross_entropy_with_logits(
            logits, target, weight=valid, pos_weight=weight, reduction="sum"
        )
        bce = per_pixel / valid.sum().clamp(min=1.0)
        prob, target = torch.sigmoid(logits) * valid, target * valid
    if dice_weight == 0:
        return bce
    inter = (prob * target).sum()
    dice = 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)
    return bce + dice_weight * dice
