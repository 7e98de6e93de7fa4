"""Train a segmentation network on defect-biased patches, validated on whole held-out layers.

:func:`fit` is the loop (device, mixed precision, schedule, early stopping, best weights, time
budget, per-epoch callback); :func:`train` is the whole job behind ``pbf train``: split a
prepared dataset by layer, fit, pick the decision threshold on the validation layers' PR curve,
score the test layers against true masks and weak labels, and write a safetensors checkpoint
whose :class:`~pbf_core.models.ModelSpec` carries everything inference needs.

Progress is reported through ``on_epoch_end(metrics: dict)``, never by importing a tracker.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


def lr_factor(progress: float, schedule: str, warmup: float = 0.1) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of the run.

    ``onecycle``: cosine warm-up from 1/25 over the first ``warmup`` fraction, then cosine
    decay to 1/1000; ``cosine``: cosine decay from 1 to 1/1000. Progress is the larger of the
    step fraction and the time-budget fraction, so a run cut by ``max_minutes`` still anneals
    instead of stopping at a high rate.
    """
    p = min(max(progress, 0.0), 1.0)
    floor = 1e-3
    if schedule == "onecycle":
        if p < warmup:
            return 0.04 + 0.96 * (1 - math.cos(math.pi * p / warmup)) / 2
        p = (p - warmup) / (1 - warmup)
    elif schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; valid: onecycle, cosine")
    return floor + (1 - floor) * (1 + math.cos(math.pi * p)) / 2
