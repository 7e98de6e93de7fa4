"""Scoring a segmenter against true masks and weak labels."""

from __future__ import annotations

import numpy as np
import pytest

from pbf_core.data.dataset import Sample
from pbf_core.data.layers import defect_code
from pbf_core.deploy.inference import Segmenter
from pbf_core.evaluation.scores import Evaluation, evaluate, score_masks
from pbf_core.model.spec import ModelSpec

SPEC = ModelSpec(in_channels=1, views=("image",), tile_size=64, tile_overlap=16, threshold=0.5)


def oracle() -> Segmenter:
    """Probability = the image itself; the test images carry their truth in the pixels."""
    return Segmenter(lambda batch: batch[:, 0], SPEC)


def sample(i: int, with_truth: bool = True) -> Sample:
    truth = np.zeros((80, 90), bool)
    truth[10 + i : 14 + i, 20:25] = True
    truth[50:52, 60:70] = True
    types = np.where(truth, defect_code("hole"), 0).astype(np.uint8)
    types[50:52, 60:70] = defect_code("horizontal")
    image = np.where(truth, 0.9, 0.1).astype(np.float32)[None]
    weak = np.zeros_like(truth)
    weak[10 + i : 14 + i, 20:25] = True  # the weak label misses the horizontal line
    return Sample(
        f"L{i}", image, weak, truth if with_truth else None, types if with_truth else None
    )


def test_oracle_scores_perfectly_against_truth():
    result = evaluate(oracle(), [sample(0), sample(3)])
    truth = result.truth
    assert truth.pixel["dice"] == pytest.approx(1.0)
    assert truth.instance["instance_recall"] == 1.0
    assert truth.instance["false_positives_per_image"] == 0.0
    assert truth.per_type["horizontal"]["n_true"] == 2
    assert truth.average_precision == pytest.approx(1.0)
    # against the weak labels the horizontal lines are false positives
    assert result.weak.instance["false_positives_per_image"] == 1.0
    assert result.weak.pixel["precision"] < 1.0
    assert result.reference == "truth" and result.primary is truth


def test_threshold_override_and_layers_without_truth():
    result = evaluate(oracle(), [sample(0), sample(1, with_truth=False)], threshold=0.95)
    assert result.threshold == 0.95
    assert result.truth.layers == 1 and result.weak.layers == 2
    assert result.truth.pixel["recall"] == 0.0


def test_evaluation_flattens_for_tracking_and_the_gate_and_round_trips():
    result = evaluate(oracle(), [sample(0), sample(1, with_truth=False)])
    flat = result.metrics("test")
    assert flat["test/truth/dice"] == result.truth.pixel["dice"]
    assert flat["test/weak/instance_recall"] == result.weak.instance["instance_recall"]
    assert flat["test/truth/average_precision"] == result.truth.average_precision
    assert flat["test/threshold"] == 0.5
    assert all(isinstance(v, float) for v in flat.values())
    gate = result.gate_metrics()
    assert gate["truth/dice"] == flat["test/truth/dice"] and "threshold" not in gate
    assert set(result.primary.headline) == {
        "dice", "recall", "precision", "instance_recall", "false_positives_per_image"
    }  # fmt: skip
    assert Evaluation.from_dict(result.to_dict()).to_dict() == result.to_dict()
    weak_only = evaluate(oracle(), [sample(2, with_truth=False)])
    assert weak_only.reference == "weak" and "truth" not in weak_only.by_labels()
    assert not any(k.startswith("test/truth/") for k in weak_only.metrics())


def test_evaluate_bad_input():
    with pytest.raises(ValueError, match="no layers"):
        evaluate(oracle(), [])
    with pytest.raises(ValueError, match="probability maps"):
        score_masks([np.zeros((4, 4), np.float32)], [], 0.5)
