"""Corruptions for the robustness benchmark: shapes, determinism, severities that get worse."""

from __future__ import annotations

import numpy as np
import pytest

from pbf_core.evaluation.corruptions import CORRUPTIONS, LEVELS, SEVERITIES, corrupt


@pytest.fixture(scope="module")
def views() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.normal(24_000, 800, size=(3, 48, 64))
    base[:, 20:26, 30:36] = 9_000  # a dark defect
    return np.clip(base, 0, 65_535).astype(np.uint16)


def test_every_corruption_has_five_levels():
    assert set(LEVELS) == set(CORRUPTIONS) and len(CORRUPTIONS) >= 8
    assert all(len(levels) == len(SEVERITIES) == 5 for levels in LEVELS.values())


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_keeps_the_layer_and_gets_worse_with_severity(views, name):
    changes = []
    for severity in SEVERITIES:
        out = corrupt(views, name, severity, seed=3)
        assert out.shape == views.shape and out.dtype == np.uint16
        assert np.array_equal(out, corrupt(views, name, severity, seed=3))  # seeded
        changes.append(float(np.abs(out.astype(np.float64) - views).mean()))
    assert changes[0] > 0
    assert changes[-1] > changes[0], changes


def test_single_view_images_and_bad_requests(views):
    assert corrupt(views[0], "jpeg", 2).shape == views[0].shape
    with pytest.raises(ValueError, match="valid: gaussian_noise"):
        corrupt(views, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(views, "jpeg", 6)
    with pytest.raises(ValueError, match="uint16"):
        corrupt(views.astype(np.float32), "jpeg", 1)
