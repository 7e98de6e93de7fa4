"""Weak label synthesis (threshold baseline, background method) and label quality counts."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pbf_core.config import BackgroundLabelConfig, LabelConfig, ThresholdLabelConfig
from pbf_core.data.imaging import bed_mask
from pbf_core.data.labels import METHODS, background_labels, synthesize_labels, threshold_labels
from pbf_core.evaluation.metrics import QUALITY_COUNTS, instance_counts, instance_metrics

SIZE = 64
BOTH = ["threshold", "background", "adaptive"]


def bed(channels: int = 3, seed: int = 0) -> np.ndarray:
    """A flat mid-grey powder bed with mild noise: ``(C, SIZE, SIZE)`` float32."""
    rng = np.random.default_rng(seed)
    x = 0.5 + rng.normal(0.0, 0.01, (channels, SIZE, SIZE))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


#: Crafted arrays are drawn in pixels, so the background method's windows are not rescaled.
PX = BackgroundLabelConfig(reference_size=None)


def label(method: str, image: np.ndarray, **overrides: object) -> np.ndarray:
    defaults = {"reference_size": None} if method != "threshold" else {}
    sub = type(getattr(LabelConfig(), method))(**{**defaults, **overrides})
    return synthesize_labels(image, LabelConfig(method=method, **{method: sub}))


def square(y: int, x: int, side: int) -> tuple[slice, slice]:
    return slice(y, y + side), slice(x, x + side)


# --- labelling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", BOTH)
@pytest.mark.parametrize("channels", [1, 3])
def test_dark_hole_in_all_views_is_found(method: str, channels: int) -> None:
    image = bed(channels)
    image[(slice(None), *square(30, 20, 4))] = 0.02
    mask = label(method, image)
    assert mask.shape == (SIZE, SIZE) and mask.dtype == bool
    assert mask[square(30, 20, 4)].all()
    assert mask.sum() <= 4 * 4 + 8  # the hole, at most a thin rim around it


@pytest.mark.parametrize("method", BOTH)
def test_labels_keep_to_the_powder_bed(method: str) -> None:
    # a bright, smooth machine frame 32 px wide with dark bolt holes, around a bed with a hole
    rng = np.random.default_rng(4)
    image = np.clip(0.5 + rng.normal(0.0, 0.02, (3, 256, 256)), 0, 1).astype(np.float32)
    frame = np.ones((256, 256), bool)
    frame[32:-32, 32:-32] = False
    image[:, frame] = 0.85
    for y, x in ((8, 100), (240, 60), (150, 12)):
        image[(slice(None), *square(y, x, 5))] = 0.02
    image[(slice(None), *square(120, 140, 5))] = 0.02
    cfg = LabelConfig(method=method, bed_only=False)
    if method != "threshold":
        cfg = cfg.model_copy(update={method: type(getattr(cfg, method))(reference_size=None)})
    everywhere = synthesize_labels(image, cfg, bed_mask(image))
    kept = synthesize_labels(image, cfg.model_copy(update={"bed_only": True}), bed_mask(image))
    assert everywhere[frame].sum() >= 3 * 25 and kept[square(120, 140, 5)].all()
    unknown = synthesize_labels(image, cfg.model_copy(update={"bed_only": True}))
    np.testing.assert_array_equal(unknown, everywhere)  # no bed given: the whole picture
    assert not kept[frame].any()
    inner = square(48, 48, 160)  # the bed's edge is found within two 8 px blocks
    np.testing.assert_array_equal(kept[inner], everywhere[inner])


@pytest.mark.parametrize("shadow_view", [0, 1, 2])
def test_shadow_in_one_view_is_not_labelled_by_background(shadow_view: int) -> None:
    image = bed(3)
    image[shadow_view][square(20, 20, 5)] = 0.1
    assert not background_labels(image, PX).any()


@pytest.mark.parametrize("channels", [1, 3])
def test_bright_spot_found_by_background_not_threshold(channels: int) -> None:
    image = bed(channels)
    image[(slice(None), *square(40, 40, 3))] = 0.95
    assert background_labels(image, PX)[square(40, 40, 3)].all()
    assert not threshold_labels(image, ThresholdLabelConfig()).any()


def test_bright_spot_ignored_when_detect_bright_is_off() -> None:
    image = bed(3)
    image[(slice(None), *square(40, 40, 3))] = 0.95
    assert not label("background", image, detect_bright=False).any()


@pytest.mark.parametrize("method", BOTH)
def test_single_dark_pixels_are_removed(method: str) -> None:
    image = bed(3)
    for y, x in [(10, 10), (30, 50), (50, 20)]:
        image[:, y, x] = 0.0
    assert not label(method, image).any()


@pytest.mark.parametrize(("max_area_fraction", "kept"), [(0.02, True), (0.005, False)])
def test_blobs_above_max_area_are_rejected(max_area_fraction: float, kept: bool) -> None:
    image = bed(3)
    image[(slice(None), *square(20, 20, 7))] = 0.05  # 49 px = 1.2 % of 64²
    mask = label("background", image, max_area_fraction=max_area_fraction)
    assert mask[square(20, 20, 7)].all() == kept
    assert mask.any() == kept


@pytest.mark.parametrize("channels", [1, 3])
def test_part_edge_and_hatch_texture_are_not_labelled(channels: int) -> None:
    image = bed(channels)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    hatch = 0.7 + 0.08 * np.sin(2 * np.pi * (xx + yy) / 6.0)  # a melted part with hatch lines
    image[:, :, 32:] = np.clip(hatch[:, 32:] + image[:, :, 32:] - 0.5, 0, 1)
    assert not label("background", image).any()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("angle", [0, 30, 45])
def test_bright_part_corners_are_not_labelled(channels: int, angle: int) -> None:
    image = bed(channels)
    corners = cv2.boxPoints(((32.0, 32.0), (30.0, 22.0), float(angle)))
    part = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(part, [np.round(corners).astype(np.int32)], 1)
    image[:, part > 0] += 0.35  # a melted part: brighter than powder, with sharp corners
    # Size alone must not be what rejects it: the median background cuts its corners off.
    assert not label("background", image, max_area_fraction=1.0).any()


@pytest.mark.parametrize(("max_hole_fraction", "kept"), [(0.25, False), (100.0, True)])
def test_thin_ring_parts_are_rejected(max_hole_fraction: float, kept: bool) -> None:
    image = bed(3)
    ring = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(ring, (32, 32), 12, 1, thickness=4)  # narrower than the structuring disk
    image[:, ring > 0] += 0.35
    mask = label("background", image, max_hole_fraction=max_hole_fraction, max_area_fraction=1.0)
    assert mask.any() == kept


@pytest.mark.parametrize(("reference_size", "found"), [(None, True), (64, True), (512, False)])
def test_windows_scale_with_image_size(reference_size: int | None, found: bool) -> None:
    image = bed(3)
    image[(slice(None), *square(20, 20, 7))] = 0.02
    # Against 512-px references a 64-px layer is 8x coarser: a 7-px blob is a part, not a defect.
    mask = label("background", image, reference_size=reference_size)
    assert mask[square(20, 20, 7)].all() == found


@pytest.mark.parametrize("channels", [1, 3])
def test_min_votes_is_clamped_to_channels(channels: int) -> None:
    image = bed(channels)
    image[(slice(None), *square(10, 10, 4))] = 0.02
    assert label("threshold", image, min_votes=3)[square(10, 10, 4)].all()
    assert label("background", image, min_votes=3)[square(10, 10, 4)].all()


@pytest.mark.parametrize("method", BOTH)
@pytest.mark.parametrize("shape", [(3, 1, 1), (1, 2, 7), (3, 5, 5), (1, 40, 3)])
def test_images_smaller_than_the_windows_work(method: str, shape: tuple[int, int, int]) -> None:
    mask = synthesize_labels(np.full(shape, 0.5, np.float32), LabelConfig(method=method))
    assert mask.shape == shape[1:] and not mask.any()


def test_methods_registry_matches_config_names() -> None:
    assert set(METHODS) == {"threshold", "background", "adaptive"}
    image = bed(3)
    image[(slice(None), *square(30, 20, 4))] = 0.02
    for name, fn in METHODS.items():
        cfg = LabelConfig(method=name)
        np.testing.assert_array_equal(synthesize_labels(image, cfg), fn(image, getattr(cfg, name)))


def grainy_bed(seed: int = 0, size: int = 160) -> np.ndarray:
    """A bed whose coarse, heavy-tailed grain every view sees alike, plus independent noise."""
    rng = np.random.default_rng(seed)
    grain = cv2.GaussianBlur(rng.standard_t(3, (size, size)).astype(np.float32), (0, 0), 1.2)
    views = 0.5 + 0.03 * grain + rng.normal(0.0, 0.004, (3, size, size))
    return np.clip(views, 0.0, 1.0).astype(np.float32)


def test_adaptive_equals_background_under_independent_noise() -> None:
    image = bed(3, seed=3)
    image[(slice(None), *square(30, 20, 4))] = 0.3
    fixed, adaptive = label("background", image), label("adaptive", image)
    assert fixed[square(30, 20, 4)].all()
    np.testing.assert_array_equal(adaptive, fixed)


def test_adaptive_raises_thresholds_on_grain_every_view_shares() -> None:
    image = grainy_bed()
    image[(slice(None), *square(80, 80, 5))] -= 0.25
    fixed, adaptive = label("background", image), label("adaptive", image)
    blobs_fixed, blobs_adaptive = (
        cv2.connectedComponents(m.astype(np.uint8))[0] - 1 for m in (fixed, adaptive)
    )
    assert adaptive[square(80, 80, 5)].all()  # the hole is still found
    assert blobs_fixed >= 5 and blobs_adaptive <= blobs_fixed // 3


@pytest.mark.parametrize("method", BOTH)
@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((SIZE, SIZE), np.float32), "(C, H, W)"),
        (np.zeros((3, 0, SIZE), np.float32), "(C, H, W)"),
        (np.zeros((3, SIZE, SIZE), np.uint16), "normalise"),
        (np.full((3, SIZE, SIZE), 2.0, np.float32), "[0, 1]"),
        (np.full((3, SIZE, SIZE), np.nan, np.float32), "NaN"),
        ([[[0.5]]], "numpy array"),
    ],
    ids=["2d", "empty", "uint16", "out-of-range", "nan", "list"],
)
def test_bad_images_raise_value_error(method: str, image: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        synthesize_labels(image, LabelConfig(method=method))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field",
    [{"background_kernel": 30}, {"min_votes": 0}, {"max_area_fraction": 0.0}, {"grow_fraction": 2}],
)
def test_bad_background_config_is_refused(field: dict) -> None:
    with pytest.raises(ValidationError):
        BackgroundLabelConfig(**field)


# --- quality -----------------------------------------------------------------------------------


def _masks() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((8, 8), bool)
    truth[1:3, 1:3] = True  # instance A, 4 px
    truth[6, 6] = True  # instance B, 1 px
    pred = np.zeros((8, 8), bool)
    pred[2, 2:4] = True  # touches A: 1 tp, 1 fp
    pred[5:7, 0] = True  # touches nothing: 2 fp
    return pred, truth


def test_label_quality_counts_hand_made_masks() -> None:
    pred, truth = _masks()
    assert instance_counts(pred, truth) == {
        "tp": 1,
        "fp": 3,
        "fn": 4,
        "n_true": 2,
        "n_detected": 1,
        "n_pred": 2,
        "n_false_pred": 1,
    }


def test_label_quality_uses_8_connectivity_and_accepts_0_255() -> None:
    truth = np.zeros((4, 4), np.uint8)
    truth[0, 0] = truth[1, 1] = 255  # diagonal neighbours: one instance
    pred = np.zeros((4, 4), np.uint8)
    pred[3, 3] = 1
    q = instance_counts(pred, truth)
    assert (q["n_true"], q["n_detected"], q["n_pred"], q["n_false_pred"]) == (1, 0, 1, 1)


def test_label_quality_perfect_and_empty() -> None:
    _, truth = _masks()
    perfect = instance_counts(truth, truth)
    assert perfect["fp"] == perfect["fn"] == 0 and perfect["n_detected"] == perfect["n_true"] == 2
    empty = np.zeros((8, 8), bool)
    assert instance_counts(empty, empty) == dict.fromkeys(QUALITY_COUNTS, 0)


@pytest.mark.parametrize(
    ("pred", "truth", "message"),
    [
        (np.zeros((8, 8), bool), np.zeros((8, 9), bool), "shape"),
        (np.zeros((1, 8, 8), bool), np.zeros((1, 8, 8), bool), r"\(H, W\)"),
        (np.zeros((8, 8), np.float32), np.zeros((8, 8), bool), "pred must be bool or integer"),
        (np.zeros((8, 8), bool), np.zeros((8, 8), np.float64), "truth must be bool or integer"),
    ],
    ids=["shape-mismatch", "3d", "float-pred", "float-truth"],
)
def test_label_quality_bad_inputs(pred: np.ndarray, truth: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        instance_counts(pred, truth)


def test_summarize_quality_micro_averages() -> None:
    pred, truth = _masks()
    s = instance_metrics([instance_counts(pred, truth), instance_counts(truth, truth)])
    tp, fp, fn = 1 + 5, 3, 4
    assert s["layers"] == 2
    assert s["precision"] == pytest.approx(tp / (tp + fp))
    assert s["recall"] == pytest.approx(tp / (tp + fn))
    assert s["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert s["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s["instance_recall"] == pytest.approx(3 / 4)
    assert s["false_positives_per_image"] == pytest.approx(0.5)


_E = np.zeros((8, 8), bool)
_T = _masks()[1]


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ([], {"precision": 1.0, "recall": 1.0, "iou": 1.0, "false_positives_per_image": 0.0}),
        ([(_E, _E)], {"precision": 1.0, "recall": 1.0, "iou": 1.0, "dice": 1.0}),
        ([(_T, _E)], {"precision": 0.0, "recall": 1.0, "iou": 0.0, "instance_recall": 1.0}),
        ([(_E, _T)], {"precision": 1.0, "recall": 0.0, "iou": 0.0, "instance_recall": 0.0}),
    ],
    ids=["no-layers", "nothing-anywhere", "pred-only", "truth-only"],
)
def test_summarize_quality_zero_denominators(layers: list, expected: dict) -> None:
    s = instance_metrics(instance_counts(p, t) for p, t in layers)
    for key, value in expected.items():
        assert s[key] == value, key
    json.dumps(s, allow_nan=False)  # NaN-free


def test_summarize_quality_names_missing_counts() -> None:
    with pytest.raises(
        ValueError, match="layer 1: quality counts lack n_true, n_detected, n_pred, n_false_pred"
    ):
        instance_metrics([dict.fromkeys(QUALITY_COUNTS, 0), {"tp": 1, "fp": 0, "fn": 0}])
