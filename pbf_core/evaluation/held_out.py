"""The pipeline's held-out check: a model on layers of a style family it was never trained on.

:func:`evaluate_held_out` renders ``HeldOutConfig.layers`` layers of the held-out family (another
seed than any training build) and scores a model file on them against the generator's true
masks, at the model's own calibrated threshold. ``pbf held-out`` and the training flow's
held-out task call it; ``benchmarks/robustness.py`` goes further (corruptions, every family,
weak labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pbf_core.config import HeldOutConfig
from pbf_core.deploy.inference import load_segmenter
from pbf_core.evaluation.robustness import SCORES, held_out_layers, model_masks, score_layers

#: The scores of a held-out check, in the order they are shown (those of every robustness row).
HELD_OUT_KEYS: tuple[str, ...] = SCORES


@dataclass(frozen=True)
class HeldOutScores:
    """A model on freshly rendered layers of one style family.

    Attributes:
        style, layers, size, seed: what was rendered.
        threshold: the model's decision threshold.
        scores: pixel ``dice``, ``precision``, ``recall`` (micro-averaged), ``instance_recall``
            and ``false_components`` (predicted components touching no true defect, per layer).
    """

    style: str
    layers: int
    size: int
    seed: int
    threshold: float
    scores: dict[str, float]

    def metrics(self) -> dict[str, float]:
        """MLflow metric names: ``held_out/<style>/<score>``."""
        return {f"held_out/{self.style}/{k}": float(v) for k, v in self.scores.items()}


def evaluate_held_out(model: str | Path, cfg: HeldOutConfig, device: str = "cpu") -> HeldOutScores:
    """Score a model file (checkpoint or ONNX) on ``cfg.layers`` layers of ``cfg.style``.

    Raises:
        ValueError: ``cfg.layers`` is 0 (the check is switched off; callers skip it).
        CheckpointError, ExportError: unreadable model file.
    """
    if cfg.layers < 1:
        raise ValueError("the held-out check is off (held_out.layers = 0)")
    segmenter = load_segmenter(model, device=device)
    layers = held_out_layers(cfg.style, cfg.layers, cfg.size, cfg.seed)
    scores = score_layers(model_masks(segmenter), layers)
    return HeldOutScores(
        cfg.style, cfg.layers, cfg.size, cfg.seed, float(segmenter.spec.threshold), scores
    )
