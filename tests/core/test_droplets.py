"""Spatter droplets added to training patches (pbf_core/model/droplets.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pbf_core.config import AugmentConfig
from pbf_core.model.droplets import ROOM, add_droplets
from pbf_core.model.patches import PatchDataset


def _patch() -> np.ndarray:
    """Powder at 0.3 on the left half, a part at 0.7 on the right, a saturated strip in it."""
    image = np.full((3, 64, 64), 0.3, np.float32)
    image[:, :, 32:] = 0.7
    image[:, :, 56:] = 1.0
    return image


def test_droplets_brighten_every_view_alike_on_the_part_and_join_the_target():
    image, target = _patch(), np.zeros((64, 64), np.uint8)
    target[0:4, 0:4] = 1  # a labelled defect
    target[60:64, 40:44] = 2  # an ignored spot
    on_part = on_powder = 0
    for seed in range(20):
        out, code = add_droplets(image, target, np.random.default_rng(seed))
        new = (code & 1).astype(bool) & ~(target & 1).astype(bool)
        assert new.any() and (code[target == 2] == 2).all()  # ignored pixels stay as they were
        changed = (out != image).any(axis=0)
        assert np.array_equal(changed, new)  # what is painted is what is labelled
        assert (image[:, new] < ROOM).all()  # never on a saturated pixel: every view shows it
        gain = out[:, new] - image[:, new]
        assert (gain > 0.1).all() and np.ptp(
            gain / (1.0 - image[:, new] + 1e-6), axis=0
        ).max() < 0.5
        on_part += int(new[:, 32:].sum())
        on_powder += int(new[:, :32].sum())
    assert on_part > 3 * on_powder  # centred on the brighter pixels with room: the part
    assert (image == _patch()).all()  # the input is not modified


def test_a_patch_without_room_is_left_alone():
    image, target = np.ones((3, 32, 32), np.float32), np.zeros((32, 32), np.uint8)
    out, code = add_droplets(image, target, np.random.default_rng(0))
    assert out is image and code is target


def test_patches_get_droplets_only_when_asked():
    rng = np.random.default_rng(1)
    images = [rng.uniform(0.2, 0.6, (3, 64, 64)).astype(np.float32)]
    targets = [np.zeros((64, 64), bool)]
    plain = PatchDataset(images, targets, 64, 4, seed=2)
    dropped = PatchDataset(images, targets, 64, 4, seed=2, droplet_p=1.0)
    assert all(plain[i]["target"].sum() == 0 for i in range(4))
    assert all(dropped[i]["target"].sum() > 0 for i in range(4))
    assert AugmentConfig().droplet_p == 0.0
    with pytest.raises(ValueError):
        AugmentConfig(droplet_p=1.5)
