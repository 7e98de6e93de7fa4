"""Training data: defect-biased random patches at native resolution, augmentation, and whole
validation layers.

Defects are tiny (real layers: a fraction of a percent of the pixels), so uniform crops would
show the network almost only background and resizing a layer would erase them. Instead each
training item is a ``patch_size`` crop of a full-resolution layer; with probability
``positive_fraction`` the crop is placed on a labelled defect, the defect drawn uniformly among
all connected components of the training targets (not among pixels, which would favour large
defects) — or, with ``balance_types``, first a defect type uniformly among those present, then a
component of that type — elsewhere at a uniformly random position.

``torch`` and ``albumentations`` are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pbf_core.config import AugmentConfig
from pbf_core.model.droplets import add_droplets

if TYPE_CHECKING:
    import torch


def build_augmentation(cfg: AugmentConfig, seed: int | None = None) -> Any:
    """albumentations pipeline for ``(H, W, C)`` float32 patches in [0, 1] and uint8 masks.

    Flips and 90° rotations keep pixels exact; the affine warp interpolates the image linearly
    and the mask by nearest neighbour and reflects at the border (a constant fill would look
    like a dark defect).
    """
    import albumentations as A  # noqa: N812 (the library's own convention)

    ops: list = []
    if cfg.flips:
        ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    if cfg.affine_p > 0:
        ops.append(
            A.Affine(
                scale=(0.9, 1.1),
                rotate=(-15, 15),
                translate_percent=(-0.05, 0.05),
                border_mode=cv2.BORDER_REFLECT_101,
                p=cfg.affine_p,
            )
        )
    if cfg.brightness_contrast_p > 0:
        ops.append(
            A.RandomBrightnessContrast(
                brightness_limit=0.15, contrast_limit=0.2, p=cfg.brightness_contrast_p
            )
        )
    if cfg.noise_p > 0:
        ops.append(A.GaussNoise(std_range=(0.005, 0.03), p=cfg.noise_p))
    return A.Compose(ops + _camera_augmentation(A, cfg), seed=seed)


def _camera_augmentation(A: Any, cfg: AugmentConfig) -> list:  # noqa: N803 (albumentations)
    """What another camera does to a layer: blur, response curve, compression, noise, lighting.

    Kept milder than the robustness benchmark's corruptions, which must test beyond them.
    """
    ops: list = []
    if cfg.blur_p > 0:
        blurs = [A.GaussianBlur(sigma_limit=cfg.blur_sigma, blur_limit=0),
                 A.MotionBlur(cfg.motion_blur)]  # fmt: skip
        ops.append(A.OneOf(blurs, p=cfg.blur_p))
    if cfg.gamma_p > 0:
        ops.append(A.RandomGamma(gamma_limit=(70, 150), p=cfg.gamma_p))
    if cfg.compression_p > 0:
        ops.append(A.ImageCompression(quality_range=(60, 95), p=cfg.compression_p))
    if cfg.speckle_p > 0:
        ops.append(
            A.MultiplicativeNoise((0.93, 1.07), per_channel=True, elementwise=True, p=cfg.speckle_p)
        )
    if cfg.illumination_p > 0:
        ops.append(A.Illumination(mode="linear", intensity_range=(0.05, 0.2), p=cfg.illumination_p))
    if cfg.impulse_p > 0:
        ops.append(_impulse_noise(A)(amount=(1e-4, 2e-3), p=cfg.impulse_p))
    if cfg.saturation_p > 0:
        ops.insert(0, _saturation(A)(levels=(0.5, 0.95), p=cfg.saturation_p))
    return ops


def _saturation(A: Any) -> type:  # noqa: N803 (albumentations)
    """A transform clipping each view at a random level and stretching that level back to 1.

    A longer exposure or a higher gain saturates the brightest pixels at full scale; the
    percentile stretch then maps the clip level to 1. Incandescence and parts turn flat white.
    """

    class Saturation(A.ImageOnlyTransform):
        def __init__(self, levels: tuple[float, float], p: float = 0.5):
            super().__init__(p=p)
            self.levels = levels

        def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
            views = data["image"].shape[-1] if data["image"].ndim == 3 else 1
            return {"level": self.random_generator.uniform(*self.levels, size=views)}

        def apply(self, img: np.ndarray, level: np.ndarray, **_: Any):
            top = level.astype(img.dtype) if img.ndim == 3 else img.dtype.type(level[0])
            return np.minimum(img, top) / top

    return Saturation


def _impulse_noise(A: Any) -> type:  # noqa: N803 (albumentations)
    """A transform setting a random ``amount`` of pixels to 0 or 1, apart in every channel.

    albumentations' ``SaltAndPepper`` hits the same pixels in all channels, which is how a
    spatter droplet looks across the views; a camera's hot and dead pixels differ per exposure.
    """

    class ImpulseNoise(A.ImageOnlyTransform):
        def __init__(self, amount: tuple[float, float], p: float = 0.5):
            super().__init__(p=p)
            self.amount = amount

        def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
            shape = data["image"].shape
            rate = self.random_generator.uniform(*self.amount)
            hit = self.random_generator.random(shape) < rate
            return {"hit": hit, "salt": self.random_generator.random(shape) < 0.5}

        def apply(self, img: np.ndarray, hit: np.ndarray, salt: np.ndarray, **_: Any):
            out = img.copy()
            out[hit] = salt[hit].astype(img.dtype)
            return out

    return ImpulseNoise


def hard_negatives(
    image: np.ndarray, target: np.ndarray, share: float = 0.005, most: int = 4096
) -> np.ndarray:
    """Flat indices of the pixels that look most like defects without being one.

    The strongest local deviations from a smoothed image (part edges, glints, shadows, streaks,
    noise bursts), at least 4 px from any labelled defect: the ``share`` of pixels that deviate
    most, at most ``most`` of them.

    Args:
        image: ``(C, H, W)`` float32 in [0, 1].
        target: ``(H, W)`` bool defect mask.
    """
    deviation = np.mean(
        [np.abs(v - cv2.GaussianBlur(v, (0, 0), 3.0)) for v in image.astype(np.float32)], axis=0
    )
    near = cv2.dilate(target.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    deviation[near] = -1.0
    cut = np.quantile(deviation, 1.0 - share)
    idx = np.flatnonzero((deviation >= cut) & (deviation > 0))
    step = max(1, idx.size // most)
    return idx[::step][:most]


#: :func:`small_defect_weights`: components of this many pixels or more weigh 1.
SMALL_DEFECT_AREA = 64


def small_defect_weights(target: np.ndarray, extra: float) -> np.ndarray:
    """``(H, W)`` float32 BCE weights: ``sqrt(SMALL_DEFECT_AREA / A)`` on a defect component of
    ``A`` px, between 1 and ``1 + extra``; 1 on the background.

    A 5 px droplet otherwise counts 1/100 of a 500 px lack-of-fusion region in the loss, and a
    network can score well while never marking one.
    """
    _, labels, stats, _ = cv2.connectedComponentsWithStats(target.astype(np.uint8), connectivity=8)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float32)
    per = np.clip(np.sqrt(SMALL_DEFECT_AREA / np.maximum(area, 1)), 1.0, 1.0 + extra)
    per[0] = 1.0  # the background (label 0)
    return per.astype(np.float32)[labels]


@dataclass(frozen=True)
class _Blob:
    layer: int
    y0: int
    x0: int
    y1: int  # exclusive
    x1: int
    kind: int = 0  # most frequent defect-type code under the component (0 = unknown)


def _blobs(
    targets: Sequence[np.ndarray], types: Sequence[np.ndarray | None] | None = None
) -> list[_Blob]:
    blobs = []
    for i, t in enumerate(targets):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(t.astype(np.uint8), connectivity=8)
        codes = types[i] if types is not None else None
        for k, (x, y, w, h, _area) in enumerate(stats[1:], start=1):
            kind = 0
            if codes is not None:
                window = labels[y : y + h, x : x + w] == k
                under = codes[y : y + h, x : x + w][window]
                under = under[under > 0]
                kind = int(np.bincount(under).argmax()) if under.size else 0
            blobs.append(_Blob(i, int(y), int(x), int(y + h), int(x + w), kind))
    return blobs


class PatchDataset:
    """Random ``(image, target)`` patches of in-memory layers (a map-style torch Dataset).

    Item ``i`` of epoch ``e`` is drawn from a generator seeded with ``(seed, e, i)``: the same
    seed and epoch give the same patches whatever the number of DataLoader workers.

    Args:
        images: ``(C, H, W)`` float32 layers in [0, 1] (any size; smaller than a patch is padded).
        targets: ``(H, W)`` bool masks, one per image.
        patch_size: crop side (px).
        length: items per epoch (``steps_per_epoch * batch_size``).
        positive_fraction: probability that a crop is placed on a defect.
        augment: albumentations pipeline (see :func:`build_augmentation`) or None.
        seed: base seed.
        types: optional ``(H, W)`` defect-type code maps (0 = none), one per image.
        balance_types: with ``types``, a positive crop picks a defect type uniformly first.
        hard_negative_fraction: share of the other crops centred on a hard negative (see
            :func:`hard_negatives`) instead of a uniformly random place.
        ignore: optional ``(H, W)`` bool masks of pixels left out of the loss (doubtful
            pseudo-labels), one per image.
        small_defect_weight: when above 0, items carry BCE weights that favour small defects
            (:func:`small_defect_weights` of the augmented patch's target).
        droplet_p: probability that a patch gets a cluster of spatter droplets before its
            augmentation (:func:`~pbf_core.model.droplets.add_droplets`).

    Items:
        ``image`` ``(C, patch, patch)`` float32 tensor, ``target`` ``(1, patch, patch)`` float32;
        with ``ignore``, also ``valid`` ``(1, patch, patch)`` float32 (1 = the pixel counts);
        with ``small_defect_weight``, also ``weight`` ``(1, patch, patch)`` float32.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        targets: Sequence[np.ndarray],
        patch_size: int,
        length: int,
        positive_fraction: float = 0.6,
        augment: Any = None,
        seed: int = 0,
        types: Sequence[np.ndarray | None] | None = None,
        balance_types: bool = False,
        hard_negative_fraction: float = 0.0,
        ignore: Sequence[np.ndarray] | None = None,
        small_defect_weight: float = 0.0,
        droplet_p: float = 0.0,
    ) -> None:
        if not images or len(images) != len(targets):
            raise ValueError(
                f"need matching non-empty images/targets, got {len(images)}, {len(targets)}"
            )
        for img, t in zip(images, targets, strict=True):
            if img.ndim != 3 or img.shape[1:] != t.shape:
                raise ValueError(f"image {img.shape} and target {t.shape} do not match")
        self.images = [self._pad(np.asarray(x, np.float32), patch_size) for x in images]
        self.targets = [self._pad(np.asarray(t, bool)[None], patch_size)[0] for t in targets]
        if ignore is not None and len(ignore) != len(targets):
            raise ValueError(f"{len(ignore)} ignore masks for {len(targets)} targets")
        self.ignore = (
            None
            if ignore is None
            else [self._pad(np.asarray(m, bool)[None], patch_size)[0] for m in ignore]
        )
        self.patch_size = patch_size
        self.length = length
        self.positive_fraction = positive_fraction
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        if types is not None:
            types = [None if c is None else self._pad(c[None], patch_size)[0] for c in types]
        self.blobs = _blobs(self.targets, types)
        kinds = sorted({b.kind for b in self.blobs})
        # positive crops draw a group uniformly, then a component in it
        self.groups = (
            [[b for b in self.blobs if b.kind == k] for k in kinds]
            if balance_types and types is not None
            else [self.blobs]
        )
        self.hard_negative_fraction = hard_negative_fraction
        self.small_defect_weight = small_defect_weight
        self.droplet_p = droplet_p
        self.hard = (
            [hard_negatives(x, t) for x, t in zip(self.images, self.targets, strict=True)]
            if hard_negative_fraction > 0
            else []
        )

    @staticmethod
    def _pad(x: np.ndarray, size: int) -> np.ndarray:
        _, h, w = x.shape
        if h >= size and w >= size:
            return x
        return np.pad(x, ((0, 0), (0, max(size - h, 0)), (0, max(size - w, 0))), mode="reflect")

    def set_epoch(self, epoch: int) -> None:
        """Draw a fresh set of patches (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def _origin(self, rng: np.random.Generator) -> tuple[int, int, int]:
        p = self.patch_size
        if self.blobs and rng.random() < self.positive_fraction:
            group = self.groups[rng.integers(len(self.groups))]
            b = group[rng.integers(len(group))]
            _, h, w = self.images[b.layer].shape
            y, x = rng.integers(b.y0, b.y1), rng.integers(b.x0, b.x1)
            # the defect pixel lands anywhere in the patch, not always in the centre
            y0 = int(np.clip(y - rng.integers(0, p), 0, h - p))
            x0 = int(np.clip(x - rng.integers(0, p), 0, w - p))
            return b.layer, y0, x0
        if self.hard and rng.random() < self.hard_negative_fraction:
            return self._hard_origin(rng)
        i = int(rng.integers(len(self.images)))
        _, h, w = self.images[i].shape
        return i, int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))

    def _hard_origin(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """A crop around a hard negative of a random layer (uniform when it has none)."""
        p, i = self.patch_size, int(rng.integers(len(self.images)))
        _, h, w = self.images[i].shape
        if not self.hard[i].size:
            return i, int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        y, x = divmod(int(self.hard[i][rng.integers(self.hard[i].size)]), w)
        y0 = int(np.clip(y - rng.integers(0, p), 0, h - p))
        x0 = int(np.clip(x - rng.integers(0, p), 0, w - p))
        return i, y0, x0

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import torch

        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        i, y0, x0 = self._origin(rng)
        p = self.patch_size
        img = self.images[i][:, y0 : y0 + p, x0 : x0 + p]
        # the target in bit 0, "ignored" in bit 1: one mask the augmentation moves as a whole
        code = self.targets[i][y0 : y0 + p, x0 : x0 + p].astype(np.uint8)
        if self.ignore is not None:
            code |= self.ignore[i][y0 : y0 + p, x0 : x0 + p].astype(np.uint8) << 1
        if self.droplet_p > 0 and rng.random() < self.droplet_p:  # (no draw when off)
            img, code = add_droplets(img, code, rng)
        if self.augment is not None:
            self.augment.set_random_seed(int(rng.integers(2**31)))
            out = self.augment(image=np.ascontiguousarray(img.transpose(1, 2, 0)), mask=code)
            hwc = out["image"]
            img = np.clip(hwc if hwc.ndim == 3 else hwc[:, :, None], 0, 1).transpose(2, 0, 1)
            code = out["mask"]
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "target": torch.from_numpy((code & 1).astype(np.float32)[None]),
        }
        if self.ignore is not None:
            item["valid"] = torch.from_numpy((code & 2 == 0).astype(np.float32)[None])
        if self.small_defect_weight > 0:
            weight = small_defect_weights(code & 1, self.small_defect_weight)
            item["weight"] = torch.from_numpy(weight[None])
        return item


class LayerDataset:
    """Whole layers for validation: items ``{"image": (C, H, W), "target": (H, W) bool}`` arrays.

    Kept as numpy: validation runs :func:`pbf_core.inference.predict_tiled` on each layer.
    """

    def __init__(self, images: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images for {len(targets)} targets")
        self.images = list(images)
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "target": self.targets[index]}
