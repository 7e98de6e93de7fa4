"""The promotion gate's decision rule."""

from __future__ import annotations

import pytest

from pbf_core.config import PromotionConfig
from pbf_core.evaluation.promotion import PromotionError, Scores, decide, metric_key

CFG = PromotionConfig()


def scores(dice: float, digest: str = "abc", fp: float = 1.0, name: str = "candidate") -> Scores:
    return Scores(
        {"truth/dice": dice, "weak/dice": dice - 0.1, "truth/false_positives_per_image": fp},
        digest,
        name,
    )


def test_first_candidate_becomes_champion():
    d = decide(scores(0.5), None, CFG, parity_passed=True)
    assert d.promote and d.alias == "champion"
    assert "no champion" in d.reason


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "promote"),
    [
        (0.90, 0.80, 0.0, True),
        (0.80, 0.90, 0.0, False),  # worse never replaces the champion
        (0.85, 0.85, 0.0, False),  # a tie keeps the champion
        (0.86, 0.85, 0.02, False),  # better, but not by the margin
        (0.88, 0.85, 0.02, True),
    ],
)
def test_candidate_must_beat_champion_by_margin(candidate, champion, margin, promote):
    cfg = PromotionConfig(margin=margin)
    d = decide(scores(candidate), scores(champion, name="champion v1"), cfg, parity_passed=True)
    assert d.promote is promote
    assert d.alias == ("champion" if promote else "challenger")
    assert (d.candidate_value, d.champion_value) == (candidate, champion)
    assert "champion v1" in d.reason


def test_failed_parity_blocks_promotion_even_when_better():
    d = decide(scores(0.99), scores(0.5), CFG, parity_passed=False, parity_reason="Dice 0.9")
    assert not d.promote
    assert "parity" in d.reason and "Dice 0.9" in d.reason


def test_parity_can_be_waived():
    cfg = PromotionConfig(require_parity=False)
    assert decide(scores(0.99), scores(0.5), cfg, parity_passed=False).promote


def test_different_evaluation_sets_are_not_comparable():
    d = decide(scores(0.99, "aaa"), scores(0.5, "bbb"), CFG, parity_passed=True)
    assert not d.promote and "not comparable" in d.reason


@pytest.mark.parametrize("champion", [None, "weak champion"])
def test_floor_blocks_a_candidate_below_it_even_the_first(champion):
    cfg = PromotionConfig(floor=0.8)
    current = scores(0.3, name="champion v1") if champion else None
    d = decide(scores(0.79), current, cfg, parity_passed=True)
    assert not d.promote and "below the floor 0.8" in d.reason
    assert decide(scores(0.81), current, cfg, parity_passed=True).promote


def test_ceiling_for_a_lower_is_better_metric():
    cfg = PromotionConfig(metric="false_positives_per_image", floor=2.0)
    d = decide(scores(0.5, fp=2.5), None, cfg, parity_passed=True)
    assert not d.promote and "above the ceiling 2.0" in d.reason
    assert decide(scores(0.5, fp=1.5), None, cfg, parity_passed=True).promote


def test_lower_is_better_metric():
    cfg = PromotionConfig(metric="false_positives_per_image")
    assert decide(scores(0.5, fp=0.5), scores(0.5, fp=2.0), cfg, parity_passed=True).promote
    assert not decide(scores(0.5, fp=3.0), scores(0.5, fp=2.0), cfg, parity_passed=True).promote


@pytest.mark.parametrize(
    ("labels", "metrics", "key"),
    [
        ("auto", {"truth/dice": 1, "weak/dice": 1}, "truth/dice"),
        ("auto", {"weak/dice": 1}, "weak/dice"),
        ("weak", {"truth/dice": 1, "weak/dice": 1}, "weak/dice"),
    ],
)
def test_metric_key(labels, metrics, key):
    assert metric_key(PromotionConfig(labels=labels), Scores(metrics, "d")) == key


def test_missing_metric_is_a_clear_error():
    with pytest.raises(PromotionError, match="truth/dice"):
        decide(scores(0.5), Scores({"weak/dice": 1}, "abc", "champion v2"), CFG, parity_passed=True)


def _evaluation(dice: float):
    from pbf_core.evaluation.scores import Evaluation, LabelScores

    pixel = {"dice": dice, "iou": dice, "precision": dice, "recall": dice}
    instance = {"instance_recall": 1.0, "false_positives_per_image": 0.0}
    scores = LabelScores(2, 0.5, pixel, pixel, instance, dice, dice, 0.5, 0.5)
    return Evaluation(0.5, 2, scores, scores)


def test_promotion_step_compares_evaluations_and_names_the_champion_version():
    from pbf_core.deploy.parity import Parity
    from pbf_core.evaluation.promotion import Champion, decide_promotion

    def parity(passed: bool) -> Parity:
        return Parity("onnx-int8", "truth", 2, 0.9, 0.9, 0.9, 0.9, 1, 1, 0.01, 0.01, passed, "x")

    cfg = PromotionConfig()
    worse = decide_promotion(
        _evaluation(0.8), Champion("7", _evaluation(0.9)), "e", parity(True), cfg
    )
    assert not worse.promote and "champion v7 0.9000" in worse.reason
    first = decide_promotion(_evaluation(0.8), None, "e", parity(True), cfg)
    assert first.promote and first.metric == "truth/dice"
    failed = decide_promotion(_evaluation(0.99), None, "e", parity(False), cfg)
    assert not failed.promote and "parity gate: x" in failed.reason
