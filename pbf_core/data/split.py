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

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pbf_core.data.dataset import Sample

if TYPE_CHECKING:
    pass

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


def stratum_of(sample: Sample, rarity: Mapping[int, int]) -> str:
    """Split group of a layer: its rarest defect-type code (by ``rarity``), or ``none``."""
    if sample.types is None:
        return "none"
    present = [int(c) for c in np.unique(sample.types) if c > 0]
    if not present:
        return "none"
    return str(min(present, key=lambda c: (rarity.get(c, 0), c)))
