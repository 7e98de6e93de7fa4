"""Adapting a model to a user's printer: view folding, pseudo-labels, the masked loss, the gate,
and the whole step on a tiny synthetic build."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pbf_core.config import AdaptConfig, TrainConfig
from pbf_core.data.dataset import open_dataset
from pbf_core.data.split import split_dataset
from pbf_core.deploy.tiling import mirror_average
from pbf_core.evaluation.scores import Evaluation, score_masks
from pbf_core.model.adaptation import (
    adapt_model,
    adaptation_patches,
    decide_adaptation,
    finetune_config,
)
from pbf_core.model.checkpoints import load_checkpoint
from pbf_core.model.factory import model_from_spec
from pbf_core.model.losses import dice_bce_loss
from pbf_core.model.patches import PatchDataset
from pbf_core.model.pseudo_labels import PseudoLabel, pseudo_label
from pbf_core.model.spec import ModelSpec
from pbf_core.model.views import single_view

TINY = dict(
    device="cpu", precision="fp32", epochs=1, steps_per_epoch=2, batch_size=4, patch_size=64,
    tile_size=64, tile_overlap=8,
)  # fmt: skip


@pytest.mark.parametrize("head", ["shuffle", "full"])
def test_a_triplet_model_folds_into_the_same_single_view_model(head):
    spec = ModelSpec(head=head, decoder_channels=(32, 16, 8, 8, 8), head_width=8)
    torch.manual_seed(0)
    model = model_from_spec(spec).eval()
    folded, folded_spec = single_view(model, spec, "image")
    assert folded_spec.views == ("image",) and folded_spec.in_channels == 1
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x.repeat(1, 3, 1, 1)), rtol=0, atol=1e-5)
    assert single_view(folded, folded_spec) == (folded, folded_spec)


def test_pseudo_labels_keep_what_model_and_weak_labels_agree_on():
    prob, weak = np.zeros((40, 40), np.float32), np.zeros((40, 40), bool)
    prob[5:8, 5:8], weak[6, 6] = 0.95, True  # confident and confirmed: a defect
    prob[20:23, 5:8] = 0.95  # confident, unconfirmed: doubtful
    prob[5:8, 20:23], weak[6, 21] = 0.6, True  # confirmed, hesitant: doubtful
    prob[20:23, 20:23] = 0.6  # neither: background
    weak[35, 35] = True  # weak label alone: doubtful
    label = pseudo_label(prob, weak, 0.5, AdaptConfig(confident=0.9, ring=1))
    assert label.counts == {"defect": 1, "doubtful": 2, "background": 1}
    assert label.target.sum() == 9 and label.target[5:8, 5:8].all()
    assert label.ignore[21, 6] and label.ignore[6, 21] and label.ignore[35, 35]
    assert label.ignore[4, 6] and not label.ignore[3, 6]  # the 1 px ring, no further
    assert not label.ignore[21, 21] and not label.target[21, 21]
    assert not (label.target & label.ignore).any()


def test_flip_averaging_undoes_each_mirror():
    image = np.random.default_rng(0).random((1, 8, 12)).astype(np.float32)
    prob = mirror_average(lambda x: x[0] * np.arange(12), image)
    lr = (image[0, :, ::-1] * np.arange(12))[:, ::-1]
    np.testing.assert_allclose(prob, (2 * image[0] * np.arange(12) + lr) / 3, rtol=1e-6)


def test_ignored_pixels_do_not_touch_the_loss():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.8).float()
    valid = torch.ones_like(target)
    valid[:, :, :8] = 0
    changed = logits.clone()
    changed[:, :, :8] = 50.0  # anything at the ignored pixels
    a = dice_bce_loss(logits, target, 3.0, 1.0, valid)
    assert a == pytest.approx(float(dice_bce_loss(changed, target, 3.0, 1.0, valid)))
    assert a != pytest.approx(float(dice_bce_loss(changed, target, 3.0, 1.0)))


def test_patches_carry_the_ignore_mask_through_augmentation():
    from pbf_core.config import AugmentConfig
    from pbf_core.model.patches import build_augmentation

    image = np.random.default_rng(1).random((3, 64, 64)).astype(np.float32)
    target, ignore = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    target[10:20, 10:20], ignore[40:60, :] = True, True
    aug = build_augmentation(AugmentConfig(affine_p=1.0), seed=0)
    data = PatchDataset([image], [target], 64, 8, 0.5, aug, 0, ignore=[ignore])
    for i in range(8):
        item = data[i]
        valid, tgt = item["valid"][0].numpy(), item["target"][0].numpy()
        assert tgt.sum() > 0 and 0 < (valid == 0).sum() < 64 * 64
        assert not (tgt.astype(bool) & (valid == 0)).any()
    assert "valid" not in PatchDataset([image], [target], 64, 1)[0]


def _evaluation(dice_like: float) -> Evaluation:
    """An evaluation whose Dice grows with ``dice_like`` (share of a defect predicted)."""
    truth = np.zeros((20, 20), bool)
    truth[5:15, 5:15] = True
    prob = np.zeros((20, 20), np.float32)
    prob[5 : 5 + round(10 * dice_like), 5:15] = 1.0
    scores = score_masks([prob], [truth], 0.5)
    return Evaluation(0.5, 1, scores, scores)


def test_the_gate_asks_for_a_gain_and_no_forgetting():
    cfg = AdaptConfig(min_gain=0.0, max_source_drop=0.05)
    worse, better = _evaluation(0.5), _evaluation(0.8)
    ok, reason = decide_adaptation(worse, better, ({"dice": 0.8}, {"dice": 0.78}), cfg)
    assert ok and "true masks" in reason
    ok, reason = decide_adaptation(better, worse, ({}, {}), cfg)
    assert not ok and "short of the asked gain" in reason
    ok, reason = decide_adaptation(worse, better, ({"dice": 0.8}, {"dice": 0.7}), cfg)
    assert not ok and "forgets the mixed layers" in reason


def test_finetune_takes_the_presets_patches_and_the_adaptations_schedule():
    train = TrainConfig(**TINY, labels="truth", patience=2, max_minutes=5)
    ft = finetune_config(train, AdaptConfig(epochs=3, steps_per_epoch=4, lr=1e-4, max_minutes=2))
    assert (ft.epochs, ft.steps_per_epoch, ft.lr, ft.patience, ft.keep) == (3, 4, 1e-4, 3, "last")
    assert (ft.labels, ft.schedule, ft.max_minutes, ft.patch_size) == ("weak", "cosine", 2, 64)


def test_adaptation_patches_weigh_small_defects_as_the_preset_does():
    rng = np.random.default_rng(0)
    image = rng.random((3, 64, 64)).astype(np.float32)
    target, ignore = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    target[10:12, 10:12], ignore[40:44, 40:44] = True, True  # a 4 px droplet; a doubtful spot
    sample = type("Sample", (), {"image": image})()
    pseudo = PseudoLabel(target, ignore, {"defect": 1, "doubtful": 1, "background": 0})
    cfg = TrainConfig(**{**TINY, "patch_size": 64}, small_defect_weight=3.0)
    weighted = adaptation_patches([sample], [pseudo], ([], []), cfg)
    item = weighted[0]  # the whole 64 px layer: the droplet weighs sqrt(64 / 4); doubtful: out
    assert item["weight"].max() == 4.0 and item["valid"].min() == 0.0
    plain = cfg.model_copy(update={"small_defect_weight": 0})
    rehearsed = adaptation_patches([sample], [pseudo], ([image], [target]), plain)
    assert "weight" not in rehearsed[0] and len(rehearsed.images) == 2


def test_pseudo_labels_keep_to_the_bed_of_a_bed_only_model():
    from pbf_core.deploy.inference import Segmenter
    from pbf_core.model.adaptation import label_layers

    def everywhere(batch: np.ndarray) -> np.ndarray:
        return np.full((batch.shape[0], *batch.shape[2:]), 0.99, np.float32)

    bed = np.zeros((64, 64), bool)
    bed[8:56, 8:56] = True
    weak = np.ones((64, 64), bool)  # the weak label agrees everywhere
    sample = type("Sample", (), {"image": np.full((3, 64, 64), 0.5, np.float32), "bed": bed,
                                 "weak": weak})()  # fmt: skip
    cfg = AdaptConfig(confident=0.9, ring=0, flips=False)
    spec = ModelSpec(tile_size=64, tile_overlap=8, bed_only=True)
    kept = label_layers(Segmenter(everywhere, spec), [sample], cfg)[0]
    assert np.array_equal(kept.target, bed)
    whole = Segmenter(everywhere, spec.model_copy(update={"bed_only": False}))
    assert label_layers(whole, [sample], cfg)[0].target.all()


def test_a_flips_model_is_not_mirror_averaged_twice():
    from pbf_core.deploy.inference import Segmenter
    from pbf_core.model.adaptation import label_layers

    calls = []

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        return np.full((batch.shape[0], *batch.shape[2:]), 0.5, np.float32)

    sample = type("Sample", (), {"image": np.zeros((3, 64, 64), np.float32), "bed": None,
                                 "weak": np.zeros((64, 64), bool)})()  # fmt: skip
    spec = ModelSpec(tile_size=64, tile_overlap=8, flips=True)
    label_layers(Segmenter(counting, spec), [sample], AdaptConfig(flips=True))
    assert len(calls) == 3  # one tile, three mirror images


@pytest.fixture(scope="module")
def tiny_model(prepared_synthetic, tmp_path_factory):
    from pbf_core.model.training import train_model

    cfg = TrainConfig(**TINY, labels="truth")
    dataset = split_dataset(open_dataset(prepared_synthetic), cfg)
    return train_model(dataset, cfg, tmp_path_factory.mktemp("source"), progress=False)


ADAPT = AdaptConfig(
    epochs=1, steps_per_epoch=2, guard_layers=1, guard_size=64, rehearsal_layers=1, confident=0.5
)


@pytest.mark.slow
def test_adapt_writes_a_gated_model_and_never_trains_on_true_masks(
    tiny_model, prepared_synthetic, tmp_path
):
    """Adapting twice, once with every true mask of the train and validation layers wiped,
    gives bit-identical weights: the masks only score the held-back layers."""
    import shutil

    train = TrainConfig(**TINY, labels="weak")
    wiped = tmp_path / "wiped"
    shutil.copytree(prepared_synthetic, wiped)
    dataset = split_dataset(open_dataset(prepared_synthetic), train)
    split = dataset.require_split()
    for entry in dataset.entries(split.train + split.val):
        (wiped / entry.truth).write_bytes((prepared_synthetic / entry.weak).read_bytes())
    runs = [
        adapt_model(tiny_model.checkpoint, split_dataset(open_dataset(d), train), ADAPT, train, tmp_path / str(i), progress=False)
        for i, d in enumerate((prepared_synthetic, wiped))
    ]  # fmt: skip
    weights = [load_checkpoint(r.checkpoint)[0].state_dict() for r in runs]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=0, atol=0, msg=name)
    first = runs[0]
    assert first.spec.threshold == tiny_model.spec.threshold and first.after.truth is not None
    report = json.loads((tmp_path / "0" / "adaptation.json").read_text())
    assert report["accepted"] == first.accepted and report["reason"] == first.reason
    assert set(first.guard_before) >= {"dice", "false_components"}
    metrics = first.metrics()
    assert {"adapt/before/truth/dice", "adapt/after/truth/dice", "adapt/accepted"} <= set(metrics)
    assert set(first.pseudo) == {
        "defect",
        "doubtful",
        "background",
        "defect_share",
        "ignored_share",
    }
    assert metrics["adapt/pseudo/ignored_share"] == first.pseudo["ignored_share"] >= 0


@pytest.mark.parametrize("views", [("a", "b", "c"), ("image",)])
def test_rehearsal_layers_are_model_inputs_with_their_true_masks(views):
    from pbf_core.model.adaptation import rehearsal

    spec = ModelSpec(in_channels=len(views), views=views)
    images, truths = rehearsal(spec, AdaptConfig(rehearsal_layers=2, guard_size=64))
    assert len(images) == len(truths) == 2
    for image, truth in zip(images, truths, strict=True):
        assert image.shape == (len(views), 64, 64) and image.dtype == np.float32
        assert truth.shape == (64, 64) and truth.dtype == bool
        assert 0.0 <= image.min() < image.max() <= 1.0
    assert rehearsal(spec, AdaptConfig(rehearsal_layers=0)) == ([], [])


def test_without_true_masks_the_gate_says_it_judged_on_weak_labels():
    worse, better = _evaluation(0.5), _evaluation(0.8)
    weak_only = [Evaluation(e.threshold, e.layers, None, e.weak) for e in (worse, better)]
    ok, reason = decide_adaptation(*weak_only, ({}, {}), AdaptConfig())
    assert ok and "weak labels (no true masks)" in reason
