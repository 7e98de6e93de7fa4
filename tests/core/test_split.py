"""The split step: deterministic, stratified on request, carried by the dataset, saved beside a
checkpoint."""

from __future__ import annotations

import pytest

from pbf_core.config import TrainConfig
from pbf_core.data.dataset import open_dataset
from pbf_core.data.split import Split, split_dataset, split_layers, stratum_of
from pbf_core.errors import DatasetError

IDS = [f"L{i:03d}" for i in range(20)]


def test_split_is_disjoint_complete_and_deterministic():
    s = split_layers(IDS, (0.7, 0.15, 0.15), seed=3)
    assert sorted(s["train"] + s["val"] + s["test"]) == IDS
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (14, 3, 3)
    assert split_layers(list(reversed(IDS)), (0.7, 0.15, 0.15), seed=3) == s
    assert split_layers(IDS, (0.7, 0.15, 0.15), seed=4) != s


def test_split_small_sets_keep_every_nonempty_split():
    s = split_layers(["a", "b", "c"], (0.8, 0.1, 0.1))
    assert [len(s[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    assert split_layers(["a", "b"], (0.5, 0.5, 0.0))["test"] == []


@pytest.mark.parametrize(
    ("ids", "fractions", "match"),
    [
        (IDS, (0.5, 0.5), "3 non-negative"),
        (IDS, (0.5, 0.6, -0.1), "3 non-negative"),
        (["a", "a", "b"], (0.7, 0.15, 0.15), "unique"),
        (["a", "b"], (0.7, 0.15, 0.15), "cannot fill"),
    ],
)
def test_split_bad_input(ids, fractions, match):
    with pytest.raises(ValueError, match=match):
        split_layers(ids, fractions)


def test_stratified_split_spreads_a_rare_group_over_every_split():
    strata = {i: ("rare" if k < 6 else "common") for k, i in enumerate(IDS)}
    for seed in range(10):
        split = split_layers(IDS, (0.6, 0.2, 0.2), seed=seed, strata=strata)
        assert sorted(i for ids in split.values() for i in ids) == IDS
        assert [len(v) for v in split.values()] == [12, 4, 4]  # overall counts kept
        rare = {name: sum(strata[i] == "rare" for i in ids) for name, ids in split.items()}
        assert rare["train"] >= 2 and rare["val"] >= 1 and rare["test"] >= 1, rare
    assert split_layers(IDS, seed=3, strata=strata) == split_layers(IDS, seed=3, strata=strata)


def test_stratum_is_the_rarest_defect_type_of_a_layer():
    rarity = {1: 80, 2: 5, 3: 40}
    assert stratum_of({0, 1, 3}, rarity) == "3"
    assert stratum_of({1, 2, 3}, rarity) == "2"
    assert stratum_of({0}, rarity) == "none"
    assert stratum_of(set(), rarity) == "none"


@pytest.mark.parametrize("stratify", [False, True])
@pytest.mark.parametrize("labels", ["weak", "truth"])
def test_split_step_travels_with_the_dataset(prepared_synthetic, labels, stratify):
    dataset = open_dataset(prepared_synthetic)
    cfg = TrainConfig(labels=labels, stratify=stratify, seed=3)
    split = split_dataset(dataset, cfg).split
    assert split == split_dataset(open_dataset(prepared_synthetic), cfg).split
    assert (split.labels, split.seed, split.stratified) == (labels, 3, stratify)
    ids = [*split.train, *split.val, *split.test]
    with_truth = {e.id for e in dataset.entries() if e.truth}
    assert len(ids) == len(set(ids)) and set(ids) <= {e.id for e in dataset.entries()}
    if labels == "truth":
        assert set(ids) == with_truth
    assert split.eval_ids == (split.test or split.val) and len(split.eval_digest) == 64


def test_split_file_round_trip_and_other_data(prepared_synthetic, tmp_path):
    dataset = split_dataset(open_dataset(prepared_synthetic), TrainConfig())
    path = dataset.split.save(tmp_path / "split.json")
    assert Split.load(path) == dataset.split
    foreign = Split(("nope",), (), (), "weak", 0, False, "x")
    with pytest.raises(DatasetError, match="not in this dataset"):
        dataset.with_split(foreign)
    with pytest.raises(DatasetError, match="no split file"):
        Split.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"train": []}')
    with pytest.raises(DatasetError, match="not a split file"):
        Split.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown split part"):
        dataset.split.part("holdout")
