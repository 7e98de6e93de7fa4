"""Training data: layer splits, defect-biased random patches at native resolution, augmentation.

Defects are tiny (real layers: median 0.03 % of the pixels), so uniform crops would show the
network almost only background and resizing a layer would erase them. Instead each training
item is a ``patch_size`` crop of a full-resolution layer; with probability
``positive_fraction`` the crop is placed on a labelled defect, the defect drawn uniformly among
all connected components of the training targets (not among pixels, which would favour large
defects) — or, with ``balance_types``, first a defect type uniformly among those present, then a
component of that type (real builds can be dominated by one kind: dozens of incandescence spots
beside a few holes) — elsewhere at a uniformly random position.

``torch`` and ``albumentations`` are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from pbf_core.config import AugmentConfig
from pbf_core.datasets import LayerEntry, Sample, load_sample

if TYPE_CHECKING:
    import torch

SPLIT_NAMES = ("train", "val", "test")


def split_layers(
    ids: Sequence[str],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    strata: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Split layer ids into train/val/test, deterministic for a given id set and seed.

    The ids are sorted before shuffling, so the split does not depend on listing order. Each
    split with a non-zero fraction gets at least one layer when there are enough layers; the
    rest goes by rounding, the remainder to train. With ``strata`` (id → group, e.g. the rarest
    defect type in the layer) every group is split in the same proportions, so a rare kind of
    defect cannot end up only in the test layers; the groups are dealt in turn, so the overall
    counts stay those of the unstratified split.

    Args:
        ids: unique layer ids.
        fractions: train, val, test fractions summing to 1.
        seed: shuffling seed.
        strata: optional group of each id (ids without one form their own group).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        ValueError: duplicate ids, bad fractions, or too few layers for the non-zero splits.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    unique = sorted(set(ids))
    if len(unique) != len(ids):
        raise ValueError("layer ids must be unique")
    needed = sum(f > 0 for f in fractions)
    if len(unique) < needed:
        raise ValueError(f"{len(unique)} layer(s) cannot fill {needed} non-empty splits")
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    if strata:
        # each group shuffled, then its members spread evenly over the whole order, so any
        # prefix/suffix cut takes about the group's share
        keyed = []
        for group in sorted({strata.get(i, "") for i in unique}):
            members = [i for i in order if strata.get(i, "") == group]
            offset = rng.random()
            keyed += [((k + offset) / len(members), i) for k, i in enumerate(members)]
        order = [i for _, i in sorted(keyed)]
    n = len(order)
    n_val = max(round(fractions[1] * n), 1 if fractions[1] > 0 else 0)
    n_test = max(round(fractions[2] * n), 1 if fractions[2] > 0 else 0)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n} layers leave none for training with fractions {fractions}")
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def data_digest(root: str | Path, entries: Sequence[LayerEntry]) -> str:
    """SHA-256 over the ids and file bytes of ``entries`` (image, weak, truth), for lineage."""
    root = Path(root)
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.id):
        h.update(e.id.encode())
        for rel in (e.image, e.weak, e.truth):
            if rel:
                h.update(rel.encode())
                h.update((root / rel).read_bytes())
    return h.hexdigest()


def load_samples(root: str | Path, entries: Sequence[LayerEntry]) -> list[Sample]:
    """Load prepared layers into memory (see :func:`pbf_core.datasets.load_sample`)."""
    return [load_sample(root, e) for e in entries]


def target_of(sample: Sample, labels: Literal["weak", "truth"]) -> np.ndarray:
    """The ``(H, W)`` bool training target of a sample: its weak label or its true mask.

    Raises:
        ValueError: ``truth`` asked for a layer without a true mask.
    """
    if labels == "weak":
        return sample.weak
    if labels == "truth":
        if sample.truth is None:
            raise ValueError(f"layer {sample.id} has no true mask; train with labels=weak")
        return sample.truth
    raise ValueError(f"unknown labels {labels!r}; valid: weak, truth")


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
    return A.Compose(ops, seed=seed)


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


def stratum_of(sample: Sample, rarity: Mapping[int, int]) -> str:
    """Split group of a layer: its rarest defect-type code (by ``rarity``), or ``none``."""
    if sample.types is None:
        return "none"
    present = [int(c) for c in np.unique(sample.types) if c > 0]
    if not present:
        return "none"
    return str(min(present, key=lambda c: (rarity.get(c, 0), c)))


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

    Items:
        ``image`` ``(C, patch, patch)`` float32 tensor, ``target`` ``(1, patch, patch)`` float32.
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
        i = int(rng.integers(len(self.images)))
        _, h, w = self.images[i].shape
        return i, int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import torch

        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        i, y0, x0 = self._origin(rng)
        p = self.patch_size
        img = self.images[i][:, y0 : y0 + p, x0 : x0 + p]
        tgt = self.targets[i][y0 : y0 + p, x0 : x0 + p]
        if self.augment is not None:
            self.augment.set_random_seed(int(rng.integers(2**31)))
            out = self.augment(
                image=np.ascontiguousarray(img.transpose(1, 2, 0)), mask=tgt.astype(np.uint8)
            )
            hwc = out["image"]
            img = np.clip(hwc if hwc.ndim == 3 else hwc[:, :, None], 0, 1).transpose(2, 0, 1)
            tgt = out["mask"] > 0
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "target": torch.from_numpy(np.ascontiguousarray(tgt, dtype=np.float32)[None]),
        }


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
