"""The train / validation / test split: computed once per dataset, then carried by it.

:func:`split_dataset` is the pipeline step (the CLI's ``pbf train`` and the Prefect flow both
call it); :func:`split_layers` is the deterministic id split under it. The split travels with the
:class:`~pbf_core.data.dataset.PreparedDataset` to training, quantization, the benchmark and the
evaluation, and is saved as ``split.json`` beside a checkpoint, so ``pbf quantize`` uses the split
the model was trained with.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pbf_core.config import TrainConfig
from pbf_core.data.dataset import PreparedDataset, data_digest
from pbf_core.data.imaging import read_raw_labels
from pbf_core.errors import DatasetError
from pbf_core.files import write_json

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


def stratum_of(codes: set[int], rarity: Mapping[int, int]) -> str:
    """Split group of a layer: its rarest defect-type code (by ``rarity``), or ``none``.

    Args:
        codes: the defect-type codes present in the layer (0 = background is ignored).
        rarity: how many layers of the dataset hold each code.
    """
    present = [c for c in codes if c > 0]
    if not present:
        return "none"
    return str(min(present, key=lambda c: (rarity.get(c, 0), c)))


@dataclass(frozen=True)
class Split:
    """Layer ids per part, how they were drawn, and the frozen evaluation set.

    Attributes:
        train, val, test: sorted layer ids.
        labels: what training learns from (``weak`` labels or ``truth`` masks); with ``truth``
            only layers with a true mask are split.
        seed, stratified: how the ids were drawn.
        eval_digest: digest of the evaluation layers' bytes (the test part, else validation):
            the promotion gate compares models only on the same digest.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    labels: Literal["weak", "truth"]
    seed: int
    stratified: bool
    eval_digest: str

    @property
    def evaluated_on(self) -> Literal["test", "val"]:
        """The part the evaluation set is: ``test``, or ``val`` when there is no test part."""
        return "test" if self.test else "val"

    @property
    def eval_ids(self) -> tuple[str, ...]:
        return self.test or self.val

    def part(self, name: str) -> tuple[str, ...]:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split part {name!r}; valid: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def save(self, path: str | Path) -> Path:
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a ``split.json`` written by :meth:`save`.

        Raises:
            DatasetError: missing, unreadable or not a split.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            return cls(**{k: tuple(v) if k in SPLIT_NAMES else v for k, v in raw.items()})
        except FileNotFoundError:
            raise DatasetError(path, "no split file (written by `pbf train`)") from None
        except (OSError, ValueError, TypeError) as exc:
            raise DatasetError(path, f"not a split file ({exc})") from None


def _strata(dataset: PreparedDataset, ids: Sequence[str]) -> dict[str, str]:
    """Each layer's rarest defect type (by how many layers hold each type)."""
    entries = dataset.entries(ids)
    codes = {
        e.id: {int(c) for c in np.unique(read_raw_labels(dataset.path / e.types))}
        if e.types
        else set()
        for e in entries
    }
    rarity = Counter(c for present in codes.values() for c in present)
    return {i: stratum_of(present, rarity) for i, present in codes.items()}


def split_dataset(dataset: PreparedDataset, cfg: TrainConfig) -> PreparedDataset:
    """Split the dataset's layers for training (the pipeline's split step).

    With ``cfg.labels == "truth"`` only layers with a true mask take part; with ``cfg.stratify``
    each group of layers (by the rarest defect type in the layer) is split in the same
    proportions.

    Returns:
        The dataset carrying its :class:`Split`.

    Raises:
        DatasetError: ``labels=truth`` without true masks, or too few layers for the split.
    """
    entries = dataset.entries()
    if cfg.labels == "truth":
        entries = [e for e in entries if e.truth]
        if not entries:
            raise DatasetError(
                dataset.path, "labels=truth but no layer has a true mask; use labels=weak"
            )
    ids = [e.id for e in entries]
    strata = _strata(dataset, ids) if cfg.stratify else None
    try:
        parts = split_layers(ids, cfg.split, cfg.seed, strata)
    except ValueError as exc:
        raise DatasetError(dataset.path, f"cannot split {len(ids)} layers: {exc}") from None
    eval_ids = parts["test"] or parts["val"]
    split = Split(
        train=tuple(parts["train"]),
        val=tuple(parts["val"]),
        test=tuple(parts["test"]),
        labels=cfg.labels,
        seed=cfg.seed,
        stratified=cfg.stratify,
        eval_digest=data_digest(dataset.path, dataset.entries(eval_ids)),
    )
    return dataset.with_split(split)
