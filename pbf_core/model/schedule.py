"""The learning-rate schedule: one-cycle or cosine over the steps or the time budget."""

from __future__ import annotations

import math


def lr_factor(progress: float, schedule: str, warmup: float = 0.1) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of the run.

    ``onecycle``: cosine warm-up from 1/25 over the first ``warmup`` fraction, then cosine
    decay to 1/1000; ``cosine``: cosine decay from 1 to 1/1000. Progress is the step fraction,
    or further along the clock once a run is behind the budget's pace
    (:class:`~pbf_core.model.loop.BudgetClock`), so a run cut by ``max_minutes`` still anneals
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
