"""Pixel, instance and PR-curve metrics."""

from __future__ import annotations

import numpy as np
import pytest

from pbf_core.data.layers import defect_code
from pbf_core.evaluation.metrics import (
    PRCurve,
    dice_score,
    instance_counts,
    instance_curve,
    instance_metrics,
    iou_score,
    pixel_metrics,
    pixel_stats,
    precision_recall_curve,
    precision_score,
    recall_score,
    threshold_for_dice,
    threshold_for_recall,
    type_recall,
    type_recall_counts,
)


def masks() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((2, 8, 8), bool)
    pred = np.zeros((2, 8, 8), bool)
    truth[0, :2, :2] = True  # 4 px
    pred[0, :2, :1] = True  # 2 tp
    pred[0, 5, 5] = True  # 1 fp
    truth[1, 4:6, 4:6] = True  # 4 px, image 1: perfect
    pred[1, 4:6, 4:6] = True
    return pred, truth


def test_pixel_stats_counts():
    pred, truth = masks()
    s = pixel_stats(pred, truth)
    assert s.tp.tolist() == [2, 4]
    assert s.fp.tolist() == [1, 0]
    assert s.fn.tolist() == [2, 0]
    assert s.tn.tolist() == [59, 60]


@pytest.mark.parametrize(
    ("fn", "micro", "per_image"),
    [
        (dice_score, 12 / 15, (4 / 7 + 1) / 2),
        (iou_score, 6 / 9, (2 / 5 + 1) / 2),
        (precision_score, 6 / 7, (2 / 3 + 1) / 2),
        (recall_score, 6 / 8, (2 / 4 + 1) / 2),
    ],
)
def test_reductions(fn, micro, per_image):
    s = pixel_stats(*masks())
    assert fn(s, "micro") == pytest.approx(micro)
    assert fn(s, "per_image") == pytest.approx(per_image)


def test_empty_images_score_perfectly():
    empty = np.zeros((4, 4), bool)
    assert pixel_metrics(pixel_stats(empty, empty)) == {
        "dice": 1.0,
        "iou": 1.0,
        "precision": 1.0,
        "recall": 1.0,
    }


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), bool), "threshold"),
        (np.zeros((4, 4), bool), np.zeros((4, 5), bool), "shape"),
        (np.zeros((1, 1, 4, 4), bool), np.zeros((1, 1, 4, 4), bool), "must be"),
    ],
)
def test_pixel_stats_bad_input(pred, target, match):
    with pytest.raises(ValueError, match=match):
        pixel_stats(pred, target)


def test_unknown_reduction():
    with pytest.raises(ValueError, match="micro, per_image"):
        dice_score(pixel_stats(*masks()), "macro")


def test_instance_counts_and_summary():
    truth = np.zeros((16, 16), bool)
    truth[1:3, 1:3] = True
    truth[10:12, 10:12] = True
    pred = np.zeros_like(truth)
    pred[2, 2] = True  # touches the first defect
    pred[6, 6] = True  # false component
    c = instance_counts(pred, truth)
    assert (c["n_true"], c["n_detected"], c["n_pred"], c["n_false_pred"]) == (2, 1, 2, 1)
    m = instance_metrics([c, instance_counts(truth, truth)])
    assert m["instance_recall"] == pytest.approx(3 / 4)
    assert m["false_positives_per_image"] == pytest.approx(0.5)


def brute_force(prob, target, th):
    p = prob >= th
    return int((p & target).sum()), int((p & ~target).sum()), int((~p & target).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_pr_curve_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    prob = rng.random((3, 20, 20)).astype(np.float32)
    prob[0, 0, 0] = 0.5  # exactly on a threshold: counts as positive
    target = rng.random((3, 20, 20)) < 0.2
    th = [0.1, 0.25, 0.5, 0.9]
    curve = precision_recall_curve(prob, target, th)
    for i, t in enumerate(th):
        assert (curve.tp[i], curve.fp[i], curve.fn[i]) == brute_force(prob, target, t)


def test_pr_curves_add_over_images():
    rng = np.random.default_rng(2)
    prob = rng.random((2, 10, 10)).astype(np.float32)
    target = rng.random((2, 10, 10)) < 0.3
    whole = precision_recall_curve(prob, target)
    parts = precision_recall_curve(prob[0], target[0]) + precision_recall_curve(prob[1], target[1])
    assert np.array_equal(whole.tp, parts.tp) and np.array_equal(whole.fp, parts.fp)
    with pytest.raises(ValueError, match="different thresholds"):
        whole + precision_recall_curve(prob, target, [0.5])


def test_pr_curve_bad_input():
    with pytest.raises(ValueError, match="ascending"):
        precision_recall_curve(np.zeros((2, 2), np.float32), np.zeros((2, 2), bool), [0.5, 0.1])
    with pytest.raises(ValueError, match="float"):
        precision_recall_curve(np.zeros((2, 2), np.uint8), np.zeros((2, 2), bool))


def test_perfect_separation_has_ap_one():
    target = np.zeros((10, 10), bool)
    target[:3] = True
    prob = np.where(target, 0.9, 0.1).astype(np.float32)
    curve = precision_recall_curve(prob, target)
    assert curve.average_precision() == pytest.approx(1.0)
    assert curve.dice.max() == 1.0


def toy_curve() -> PRCurve:
    th = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    tp = np.array([100, 98, 95, 80, 50])
    fp = np.array([500, 60, 20, 5, 0])
    return PRCurve(th, tp, fp, 100 - tp)


@pytest.mark.parametrize(("target", "expected"), [(0.95, 0.5), (0.98, 0.3), (0.5, 0.9), (1.0, 0.1)])
def test_threshold_for_recall_is_highest_meeting_target(target, expected):
    assert threshold_for_recall(toy_curve(), target) == expected


def test_threshold_for_recall_unreachable_gives_lowest():
    c = toy_curve()
    c = PRCurve(c.thresholds, c.tp - 10, c.fp, c.fn + 10)
    assert threshold_for_recall(c, 0.99) == 0.1
    with pytest.raises(ValueError):
        threshold_for_recall(c, 0.0)


def test_threshold_for_dice():
    c = toy_curve()
    assert threshold_for_dice(c) == c.thresholds[np.argmax(c.dice)] == 0.5


def test_type_recall_counts_majority_type():
    truth = np.zeros((12, 12), bool)
    types = np.zeros((12, 12), np.uint8)
    truth[0:2, 0:2] = True
    types[0:2, 0:2] = defect_code("hole")
    truth[6:9, 6:9] = True
    types[6:9, 6:9] = defect_code("spattering")
    types[6, 6] = defect_code("hole")  # minority vote
    pred = np.zeros_like(truth)
    pred[7, 7] = True
    counts = type_recall_counts(pred, truth, types)
    assert counts == {"hole": [1, 0], "spattering": [1, 1]}
    summary = type_recall([counts, {"hole": [1, 1]}])
    assert summary["hole"] == {"n_true": 2, "n_detected": 1, "instance_recall": 0.5}


def test_instance_curve_recall_falls_with_threshold():
    rng = np.random.default_rng(0)
    truth = np.zeros((32, 32), bool)
    truth[4:6, 4:6] = truth[20:22, 20:22] = True
    prob = (
        np.where(truth, 0.6, 0.0).astype(np.float32) + rng.random((32, 32)).astype(np.float32) * 0.3
    )
    prob[20:22, 20:22] = 0.4
    rows = instance_curve([prob], [truth], [0.35, 0.5, 0.95])
    recalls = [r["instance_recall"] for r in rows]
    assert recalls == sorted(recalls, reverse=True)
    assert recalls[-1] == 0.0 and recalls[0] == 1.0
    assert rows[0]["false_positives_per_image"] >= rows[1]["false_positives_per_image"]
