"""The robustness scoring: held-out layers, conditions, relative scores."""

from __future__ import annotations

import numpy as np
import pytest

from pbf_core.deploy.inference import Segmenter
from pbf_core.evaluation.robustness import (
    HeldOutLayer,
    held_out_layers,
    model_masks,
    relative_to_clean,
    robustness_scores,
    score_layers,
    weak_label_masks,
)
from pbf_core.model.spec import ModelSpec


@pytest.fixture(scope="module")
def layers() -> list[HeldOutLayer]:
    return held_out_layers("classic", 2, 64, seed=11)


def oracle(layers):
    truths = {layer.views.tobytes(): layer.truth for layer in layers}
    return lambda views: truths.get(views.tobytes(), np.zeros(views.shape[1:], bool))


def test_held_out_layers_have_truth_and_differ_by_style(layers):
    assert len(layers) == 2 and all(layer.truth.any() for layer in layers)
    styled = held_out_layers("foundry", 2, 64, seed=11)
    assert np.array_equal(styled[0].truth, layers[0].truth)  # same defects, other look
    assert not np.array_equal(styled[0].views, layers[0].views)


def test_scores_of_a_perfect_and_an_empty_segmenter(layers):
    perfect = score_layers(oracle(layers), layers)
    assert perfect["dice"] == 1.0 and perfect["instance_recall"] == 1.0
    assert perfect["false_components"] == 0.0
    empty = score_layers(lambda views: np.zeros(views.shape[1:], bool), layers)
    assert empty["recall"] == 0.0 and empty["instance_recall"] == 0.0


def test_every_method_meets_every_condition(layers):
    methods = {"oracle": oracle(layers), "background": weak_label_masks("background")}
    styles = {"foundry": held_out_layers("foundry", 1, 64, seed=12)}
    rows = robustness_scores(methods, layers, ["jpeg", "gain"], styles, severities=(1, 3))
    assert len(rows) == 2 * (1 + 2 * 2 + 1)
    clean = next(r for r in rows if r.method == "oracle" and r.condition == "clean")
    assert clean.dice == 1.0
    jpeg = [r for r in rows if r.method == "oracle" and r.condition == "jpeg"]
    assert all(r.dice < 1.0 for r in jpeg)  # the oracle only knows the clean bytes
    rel = relative_to_clean(rows, max_severity=3)
    expected = np.mean([r.dice for r in jpeg])
    assert rel["oracle"]["jpeg"]["relative_dice"] == pytest.approx(expected)
    assert set(rel["background"]) == {"jpeg", "gain"}


def test_a_model_segments_raw_triplets(layers):
    spec = ModelSpec(tile_size=64, tile_overlap=8, threshold=0.5)
    segmenter = Segmenter(lambda batch: (batch.mean(axis=1) < 0.2).astype(np.float32), spec)
    mask = model_masks(segmenter)(layers[0].views)
    assert mask.shape == layers[0].truth.shape and mask.dtype == bool
