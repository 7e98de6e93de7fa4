"""Defect-biased patches, augmentation and validation layers."""

from __future__ import annotations

import numpy as np
import pytest

from pbf_core.config import AugmentConfig
from pbf_core.data.dataset import Sample, target_of
from pbf_core.model.patches import (
    LayerDataset,
    PatchDataset,
    build_augmentation,
    hard_negatives,
    small_defect_weights,
)


def layers(n: int = 3, size: int = 96, channels: int = 3):
    rng = np.random.default_rng(0)
    images, targets = [], []
    for i in range(n):
        images.append(rng.random((channels, size, size)).astype(np.float32))
        t = np.zeros((size, size), bool)
        if i:  # the first layer has no defect
            t[10 * i : 10 * i + 3, 50:53] = True
        targets.append(t)
    return images, targets


@pytest.mark.parametrize("channels", [1, 3])
def test_patch_items(channels):
    images, targets = layers(channels=channels)
    ds = PatchDataset(images, targets, patch_size=32, length=10)
    item = ds[0]
    assert item["image"].shape == (channels, 32, 32) and item["target"].shape == (1, 32, 32)
    assert str(item["image"].dtype) == "torch.float32"
    assert len(ds) == 10
    with pytest.raises(IndexError):
        ds[10]


def test_positive_patches_contain_a_defect():
    images, targets = layers()
    ds = PatchDataset(images, targets, patch_size=32, length=50, positive_fraction=1.0)
    assert all(ds[i]["target"].sum() > 0 for i in range(50))
    neg = PatchDataset(images, targets, patch_size=32, length=50, positive_fraction=0.0)
    assert sum(float(neg[i]["target"].sum() > 0) for i in range(50)) < 25


def test_patches_are_reproducible_per_epoch():
    images, targets = layers()
    aug = build_augmentation(AugmentConfig(), seed=0)
    a = PatchDataset(images, targets, 32, 8, augment=aug, seed=1)
    b = PatchDataset(images, targets, 32, 8, augment=build_augmentation(AugmentConfig()), seed=1)
    assert all(np.array_equal(a[i]["image"], b[i]["image"]) for i in range(8))
    first = a[3]["image"].clone()
    a.set_epoch(1)
    assert not np.array_equal(a[3]["image"], first)


def test_small_layers_are_padded_to_a_patch():
    images, targets = layers(n=2, size=20)
    item = PatchDataset(images, targets, patch_size=32, length=2)[1]
    assert item["image"].shape == (3, 32, 32)


@pytest.mark.parametrize("channels", [1, 3])
def test_augmentation_keeps_shapes_range_and_binary_masks(channels):
    aug = build_augmentation(
        AugmentConfig(affine_p=1.0, brightness_contrast_p=1.0, noise_p=1.0), seed=0
    )
    images, targets = layers(n=2, channels=channels)
    ds = PatchDataset(images, targets, 64, 20, positive_fraction=1.0, augment=aug)
    for i in range(20):
        item = ds[i]
        assert item["image"].shape == (channels, 64, 64)
        assert float(item["image"].min()) >= 0 and float(item["image"].max()) <= 1
        assert set(np.unique(item["target"].numpy())) <= {0.0, 1.0}


@pytest.mark.parametrize("channels", [1, 3])
def test_camera_augmentation_changes_pixels_not_the_target(channels):
    camera = AugmentConfig(flips=False, affine_p=0, brightness_contrast_p=0, noise_p=0,
                           blur_p=1, gamma_p=1, compression_p=1, speckle_p=1, illumination_p=1)  # fmt: skip
    images, targets = layers(n=2, channels=channels)
    plain = PatchDataset(images, targets, 64, 8, positive_fraction=1.0, seed=3)
    seen = PatchDataset(images, targets, 64, 8, 1.0, build_augmentation(camera, seed=0), seed=3)
    for i in range(8):
        a, b = plain[i], seen[i]
        assert b["image"].shape == (channels, 64, 64)
        assert float(b["image"].min()) >= 0 and float(b["image"].max()) <= 1
        assert not np.allclose(a["image"].numpy(), b["image"].numpy())
        assert np.array_equal(a["target"].numpy(), b["target"].numpy())


def test_impulse_noise_hits_each_view_apart_and_reproducibly():
    only = AugmentConfig(flips=False, affine_p=0, brightness_contrast_p=0, noise_p=0, impulse_p=1)
    image, mask = np.full((256, 256, 3), 0.5, np.float32), np.zeros((256, 256), np.uint8)
    out = build_augmentation(only, seed=4)(image=image, mask=mask)["image"]
    hit = out != 0.5
    assert set(np.unique(out[hit])) == {0.0, 1.0}  # hot or dead
    assert 0 < hit.mean() <= 2e-3 * 1.5
    # drawn apart per view (SaltAndPepper would hit all three alike, as spatter does)
    assert not np.array_equal(hit[..., 0], hit[..., 1]) and not hit.all(axis=2).any()
    again = build_augmentation(only, seed=4)(image=image, mask=mask)["image"]
    assert np.array_equal(out, again)


def test_balanced_types_place_rare_defects_as_often_as_common_ones():
    image = np.zeros((1, 256, 256), np.float32)
    target = np.zeros((256, 256), bool)
    types = np.zeros((256, 256), np.uint8)
    for k in range(9):  # nine common defects (type 1) on the left, one rare (type 2) far right
        target[10 + 25 * k : 14 + 25 * k, 10:14] = True
        types[10 + 25 * k : 14 + 25 * k, 10:14] = 1
    target[120:124, 240:244] = True
    types[120:124, 240:244] = 2

    def rare_share(balance: bool) -> float:
        ds = PatchDataset(
            [image], [target], 16, 400, positive_fraction=1.0,
            types=[types], balance_types=balance,
        )  # fmt: skip
        item = ds[0]
        assert item["target"].any()  # every crop holds a defect (positive_fraction 1)
        # crop origins: the rare defect is the only one right of x = 200
        return np.mean([ds._origin(np.random.default_rng(i))[2] > 200 for i in range(400)])

    assert 0.05 < rare_share(False) < 0.2  # one component in ten
    assert 0.4 < rare_share(True) < 0.6  # one type in two


def test_patch_dataset_bad_input():
    images, targets = layers()
    with pytest.raises(ValueError, match="matching"):
        PatchDataset(images, targets[:2], 32, 4)
    with pytest.raises(ValueError, match="do not match"):
        PatchDataset(images, [t[:50] for t in targets], 32, 4)


def test_target_of():
    s = Sample("x", np.zeros((1, 4, 4), np.float32), np.ones((4, 4), bool), None, None)
    assert target_of(s, "weak").all()
    with pytest.raises(ValueError, match="no true mask"):
        target_of(s, "truth")


def test_layer_dataset():
    images, targets = layers(n=2)
    ds = LayerDataset(images, targets)
    assert len(ds) == 2 and ds[1]["image"] is images[1]
    with pytest.raises(ValueError):
        LayerDataset(images, targets[:1])


def test_hard_negatives_are_defect_like_pixels_away_from_defects():
    image = np.full((1, 96, 96), 0.5, np.float32)
    image[0, 40, 10:80] = 1.0  # a bright edge: not a defect
    target = np.zeros((96, 96), bool)
    target[70:74, 70:74] = True
    image[0, 70:74, 70:74] = 0.0  # the real defect
    idx = hard_negatives(image, target)
    ys, xs = np.divmod(idx, 96)
    assert idx.size and np.all(np.abs(ys - 40) <= 3)
    assert not np.any((ys >= 66) & (ys < 78) & (xs >= 66) & (xs < 78))


def test_hard_negative_patches_cover_the_hard_pixels():
    image = np.full((1, 256, 256), 0.5, np.float32)
    image[0, 200, 150:240] = 1.0
    target = np.zeros((256, 256), bool)
    target[20:23, 20:23] = True
    ds = PatchDataset([image], [target], 32, 200, positive_fraction=0.0,
                      hard_negative_fraction=1.0)  # fmt: skip
    near_edge = sum(bool(ds[i]["image"].numpy().max() == 1.0) for i in range(200))
    assert near_edge >= 180  # a hard pixel can sit a few px off the edge, at a patch border
    plain = PatchDataset([image], [target], 32, 200, positive_fraction=0.0)
    assert sum(bool(plain[i]["image"].numpy().max() == 1.0) for i in range(200)) < 100


def test_saturation_clips_each_view_at_its_own_level_and_stretches_it_back():
    only = AugmentConfig(flips=False, affine_p=0, brightness_contrast_p=0, noise_p=0,
                         saturation_p=1)  # fmt: skip
    ramp = np.linspace(0, 1, 256, dtype=np.float32)
    image = np.repeat(np.tile(ramp, (256, 1))[..., None], 3, axis=2)
    out = build_augmentation(only, seed=2)(image=image, mask=np.zeros((256, 256), np.uint8))
    out = out["image"]
    assert out.max() == pytest.approx(1.0) and out.min() == 0.0
    tops = []
    for v in range(3):
        below = (out[0, :, v] < 1.0 - 1e-6) & (ramp > 0)
        scale = out[0, below, v] / ramp[below]  # one factor: the clip level, stretched to 1
        np.testing.assert_allclose(scale, scale[0], rtol=1e-5)
        level = 1 / scale[0]
        assert 0.5 <= level <= 0.95
        np.testing.assert_array_equal(out[0, ramp >= level, v], 1.0)
        tops.append(round(float(level), 3))
    assert len(set(tops)) == 3  # drawn apart per view


def test_blur_ranges_are_checked():
    assert AugmentConfig(blur_sigma=(0.5, 2.0), motion_blur=(3, 9)).motion_blur == (3, 9)
    with pytest.raises(ValueError, match="blur_sigma"):
        AugmentConfig(blur_sigma=(0.0, 1.0))
    with pytest.raises(ValueError, match="motion_blur"):
        AugmentConfig(motion_blur=(3, 8))


def test_small_defect_weights_favour_small_components_up_to_a_cap():
    target = np.zeros((64, 64), bool)
    target[2:4, 2:4] = True  # 4 px: sqrt(64 / 4) = 4
    target[20:24, 20:24] = True  # 16 px: 2
    target[40:60, 40:60] = True  # 400 px: 1
    w = small_defect_weights(target, 3.0)
    assert w.dtype == np.float32 and w.shape == target.shape
    assert w[2, 2] == pytest.approx(4.0) and w[20, 20] == pytest.approx(2.0)
    assert w[50, 50] == 1.0 and w[10, 30] == 1.0
    assert small_defect_weights(target, 1.0)[2, 2] == pytest.approx(2.0)  # capped at 1 + extra
    assert (small_defect_weights(np.zeros((8, 8), bool), 3.0) == 1).all()


def test_patches_carry_small_defect_weights_only_when_asked():
    images, targets = layers(n=2)
    plain = PatchDataset(images, targets, 64, 4, positive_fraction=1.0, seed=1)
    weighted = PatchDataset(images, targets, 64, 4, 1.0, seed=1, small_defect_weight=3.0)
    assert "weight" not in plain[0]
    item = weighted[0]
    on = item["target"][0] > 0
    assert on.any()
    weight = item["weight"][0].numpy()
    # a 3 x 3 defect: sqrt(64 / 9); a patch border may cut it smaller, and it weighs more
    assert (weight[on.numpy()] >= (64 / 9) ** 0.5 - 1e-6).all() and weight.max() <= 4.0
    assert (weight[~on.numpy()] == 1).all()
