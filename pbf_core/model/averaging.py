"""An exponential moving average of a network's weights, updated after every optimizer step.

Validating and keeping the average instead of the raw weights smooths out the last steps'
noise: with a few hundred steps per run and a small validation split, the raw weights' scores
jump from epoch to epoch and the "best" epoch is often a lucky one.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class WeightAverage:
    """A copy of ``model`` whose floating-point weights and buffers trail it exponentially.

    The rate ramps up from the start (``min(decay, (1 + n) / (10 + n))`` after ``n`` updates),
    so the first steps' random weights do not linger. Integer buffers (BatchNorm's step count)
    are copied. The copy is always in eval mode.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def rate(self) -> float:
        """The decay of the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s current weights."""
        import torch

        weight = 1.0 - self.rate()
        with torch.no_grad():
            current = model.state_dict()
            for name, avg in self.model.state_dict().items():
                if avg.dtype.is_floating_point:
                    avg.lerp_(current[name].to(avg.dtype), weight)
                else:
                    avg.copy_(current[name])
        self.updates += 1
