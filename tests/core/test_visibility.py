"""Faint truth: which labelled defects a view hardly shows (pbf_core/model/visibility.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pbf_core.config import TrainConfig
from pbf_core.data.dataset import open_dataset
from pbf_core.data.split import split_dataset
from pbf_core.model.training import setup_training
from pbf_core.model.visibility import faint_components, view_contrasts


def _layer() -> tuple[np.ndarray, np.ndarray]:
    """Three views of a flat bed at 0.5 with three labelled 3x3 spots:
    a pore dark in every view, a droplet bright in two views and drowned in the third, and a
    droplet bright in every view."""
    image = np.full((3, 64, 64), 0.5, np.float32)
    target = np.zeros((64, 64), bool)
    spots = {"pore": (10, 10), "drowned": (30, 30), "droplet": (50, 50)}
    for y, x in spots.values():
        target[y : y + 3, x : x + 3] = True
    y, x = spots["pore"]
    image[:, y : y + 3, x : x + 3] = 0.2
    y, x = spots["drowned"]
    image[:2, y : y + 3, x : x + 3] = 0.9
    image[2, y - 4 : y + 7, x - 4 : x + 7] = 1.0  # a specular view: the part is at the top there
    y, x = spots["droplet"]
    image[:, y : y + 3, x : x + 3] = 0.8
    return image, target


def test_view_contrasts_measure_each_component_against_its_surroundings():
    image, target = _layer()
    contrast = view_contrasts(image, target)
    np.testing.assert_allclose(contrast[0], [-0.3, -0.3, -0.3], atol=1e-6)
    np.testing.assert_allclose(contrast[1], [0.4, 0.4, 0.0], atol=1e-6)
    np.testing.assert_allclose(contrast[2], [0.3, 0.3, 0.3], atol=1e-6)


def test_faint_components_are_those_their_weakest_view_hardly_shows():
    image, target = _layer()
    faint = faint_components(image, target, 0.05)
    assert faint[31, 31] and faint.sum() == 9  # the drowned droplet, whole
    assert not faint[11, 11] and not faint[51, 51]
    assert faint_components(image, target, 0.35).sum() == 27  # every spot at a high bar
    assert not faint_components(image, target, 0.0).any()  # 0: off
    assert not faint_components(image, np.zeros_like(target), 0.05).any()


def test_a_component_without_surroundings_is_kept():
    image = np.full((3, 8, 8), 0.5, np.float32)
    assert np.isnan(view_contrasts(image, np.ones((8, 8), bool))).all()
    assert not faint_components(image, np.ones((8, 8), bool), 0.5).any()


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_faint_contrast_is_checked(bad):
    with pytest.raises(ValueError, match="faint_contrast"):
        TrainConfig(faint_contrast=bad)


def test_training_leaves_faint_truth_out_of_the_loss(prepared_synthetic):
    base = dict(labels="truth", patch_size=64, steps_per_epoch=2, batch_size=4, device="cpu")
    dataset = split_dataset(open_dataset(prepared_synthetic), TrainConfig(**base))
    plain = setup_training(dataset, TrainConfig(**base)).train_loader.dataset
    strict = setup_training(dataset, TrainConfig(**base, faint_contrast=1.0)).train_loader.dataset
    assert plain.ignore is None and any(t.any() for t in plain.targets)
    # at the top of the scale every labelled defect is faint: ignored, no longer a target
    assert not any(t.any() for t in strict.targets)
    assert [m.sum() for m in strict.ignore] == [t.sum() for t in plain.targets]
    assert "valid" in strict[0]
