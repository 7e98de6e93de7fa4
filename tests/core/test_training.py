"""Devices, loss, the fit loop and the train step on a tiny synthetic build."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pbf_core.config import TrainConfig
from pbf_core.data.dataset import open_dataset
from pbf_core.data.split import split_dataset
from pbf_core.deploy.inference import Segmenter
from pbf_core.model.checkpoints import load_checkpoint
from pbf_core.model.devices import DeviceError, resolve_device, resolve_precision
from pbf_core.model.factory import create_model
from pbf_core.model.loop import BudgetClock, _start, eval_step, fit
from pbf_core.model.losses import dice_bce_loss
from pbf_core.model.patches import LayerDataset, PatchDataset
from pbf_core.model.training import TrainedModel, model_spec, train_model

SMALL = (16, 16, 8, 8, 8)
TINY = dict(
    device="cpu",
    epochs=2,
    steps_per_epoch=2,
    batch_size=2,
    patch_size=32,
    tile_size=64,
    tile_overlap=16,
    model={"decoder_channels": SMALL},
    threads=1,  # a second OpenMP thread only adds waiting when other jobs share the cores
)


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_absent_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is present")
def test_absent_mps_is_a_clear_error():
    with pytest.raises(DeviceError, match="MPS is not available"):
        resolve_device("mps")


def test_unknown_device():
    with pytest.raises(DeviceError, match="valid: auto, cpu"):
        resolve_device("tpu")


@pytest.mark.parametrize(("precision", "expected"), [("fp32", None), ("bf16", torch.bfloat16)])
def test_resolve_precision_cpu(precision, expected):
    assert resolve_precision(precision, torch.device("cpu")) == expected


def test_fp16_on_cpu_is_refused():
    with pytest.raises(DeviceError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))


def test_loss_prefers_the_right_answer_and_weights_positives():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:4, 2:4] = 1
    good = (target * 2 - 1) * 8
    assert dice_bce_loss(good, target) < 0.05
    assert dice_bce_loss(-good, target) > 1.5
    missed = torch.full_like(target, -3.0)
    assert dice_bce_loss(missed, target, pos_weight=10, dice_weight=0) > dice_bce_loss(
        missed, target, pos_weight=1, dice_weight=0
    )


def test_loss_weights_count_in_the_bce_only():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:4, 2:4] = 1
    missed = torch.full_like(target, -3.0)
    plain = dice_bce_loss(missed, target)
    assert torch.isclose(dice_bce_loss(missed, target, weight=torch.ones_like(target)), plain)
    heavy = torch.where(target > 0, 4.0, 1.0)
    bce = dice_bce_loss(missed, target, dice_weight=0)
    weighted = dice_bce_loss(missed, target, dice_weight=0, weight=heavy)
    # the missed defect pixels dominate the BCE, so it grows by nearly their weight
    assert 3.0 * bce < weighted < 4.0 * bce
    # the Dice term is the same with or without weights
    assert torch.isclose(dice_bce_loss(missed, target, weight=heavy) - weighted, plain - bce)


def toy_layers(n: int, size: int = 64, seed: int = 0):
    """Bright squares on noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        img = (rng.random((3, size, size)) * 0.3).astype(np.float32)
        t = np.zeros((size, size), bool)
        y, x = rng.integers(4, size - 12, 2)
        t[y : y + 6, x : x + 6] = True
        img[:, t] = 0.9
        images.append(img)
        targets.append(t)
    return images, targets


def loaders(cfg: TrainConfig):
    images, targets = toy_layers(4)
    patches = PatchDataset(images, targets, cfg.patch_size, cfg.steps_per_epoch * cfg.batch_size)
    val = LayerDataset(*toy_layers(2, seed=1))
    return DataLoader(patches, batch_size=cfg.batch_size), val


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fit_runs_calls_back_and_keeps_the_best_epoch(precision):
    cfg = TrainConfig(**TINY, precision=precision)
    model = create_model(decoder_channels=SMALL)
    seen = []
    history = fit(model, *loaders(cfg), cfg, on_epoch_end=seen.append, progress=False)
    assert [m["epoch"] for m in seen] == [0, 1]
    assert {"train_loss", "val_dice", "val_threshold", "lr", "is_best"} <= set(seen[0])
    assert history.best_epoch in (0, 1)
    assert history.best_score == max(m["val_dice"] for m in history.epochs)
    assert history.stopped == "completed"
    assert history.precision == ("bfloat16" if precision == "bf16" else "float32")
    env = history.environment  # what a rerun elsewhere must match to give the same weights
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert not model.training


def test_fit_with_a_weight_average_validates_and_keeps_the_average():
    """With ``ema_decay`` the scores are the average's and the model ends holding it."""
    cfg = TrainConfig(**TINY, keep="last")
    ema = cfg.model_copy(update={"ema_decay": 0.9})
    torch.manual_seed(0)
    raw_model = create_model(decoder_channels=SMALL)
    ema_model = copy.deepcopy(raw_model)
    train, val = loaders(cfg)
    raw = fit(raw_model, train, val, cfg, progress=False)
    averaged = fit(ema_model, train, val, ema, progress=False)
    assert averaged.epochs[-1]["val_dice"] != raw.epochs[-1]["val_dice"]
    # the training itself is the same (same seed, same batches): only what is kept differs
    assert averaged.epochs[0]["train_loss"] == raw.epochs[0]["train_loss"]
    for history, model in ((raw, raw_model), (averaged, ema_model)):
        run = _start(model, cfg)  # re-validate what the model holds at the end
        assert eval_step(run, val)["val_dice"] == pytest.approx(history.epochs[-1]["val_dice"])


@pytest.mark.parametrize("clock", ["wall", "process"])
def test_fit_stops_on_time_budget(clock):
    cfg = TrainConfig(**{**TINY, "epochs": 50}, max_minutes=1e-4, budget_clock=clock)
    history = fit(create_model(decoder_channels=SMALL), *loaders(cfg), cfg, progress=False)
    assert history.stopped == "time_budget"
    assert len(history.epochs) <= 1


def test_time_budget_is_a_cap_until_half_of_it_is_spent_behind_the_pace():
    now = [0.0]
    clock = BudgetClock(100.0, lambda: now[0], 0.0)
    now[0] = 10.0
    assert clock.schedule_progress(0.05) == 0.05  # the steps set the schedule, not the clock
    clock.check_pace(0.02)  # a slow start (10 % of the budget, 2 % of the steps): not yet
    assert not clock.paced and clock.schedule_progress(0.3) == 0.3
    now[0] = 45.0
    clock.check_pace(0.6)  # caught up: on pace
    assert not clock.paced
    now[0] = 50.0
    clock.check_pace(0.4)  # 50 % after 40 %: the budget will end the run, follow the clock
    assert clock.paced and clock.schedule_progress(0.4) == pytest.approx(0.4)  # no jump
    now[0] = 75.0  # half the remaining budget: half the remaining schedule
    assert clock.schedule_progress(0.5) == pytest.approx(0.7)
    assert clock.schedule_progress(0.9) == 0.9  # never behind the steps
    now[0] = 100.0
    assert clock.schedule_progress(0.6) == pytest.approx(1.0)  # annealed when the budget ends


def test_fit_refuses_absent_device():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    cfg = TrainConfig(**{**TINY, "device": "cuda"})
    with pytest.raises(DeviceError):
        fit(create_model(decoder_channels=SMALL), *loaders(cfg), cfg, progress=False)


def test_fit_refuses_empty_validation():
    cfg = TrainConfig(**TINY)
    train_loader, _ = loaders(cfg)
    with pytest.raises(ValueError, match="validation set is empty"):
        fit(
            create_model(decoder_channels=SMALL),
            train_loader,
            LayerDataset([], []),
            cfg,
            progress=False,
        )


@pytest.mark.parametrize(
    "bad",
    [
        {"patch_size": 100},
        {"split": (0.5, 0.5, 0.5)},
        {"tile_overlap": 200},
        {"labels": "both"},
        {"ema_decay": 1.0},
    ],
)
def test_train_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**{**TINY, **bad})


@pytest.mark.slow
@pytest.mark.parametrize("labels", ["weak", "truth"])
def test_train_step_writes_a_usable_checkpoint(prepared_synthetic, tmp_path, labels):
    cfg = TrainConfig(**TINY, labels=labels)
    dataset = split_dataset(open_dataset(prepared_synthetic), cfg)
    result = train_model(dataset, cfg, tmp_path, progress=False)
    assert result.checkpoint.is_file() and result.split == dataset.split
    _, spec = load_checkpoint(result.checkpoint)
    assert spec.labels == labels and spec.views == ("a", "b", "c") and 0 < spec.threshold < 1
    assert spec.train_data_digest and len(spec.train_data_digest) == 64
    assert set(spec.metrics) >= {"dice", "recall", "instance_recall"}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["truth"]["pixel"]["dice"] == pytest.approx(spec.metrics["dice"])
    split = json.loads((tmp_path / "split.json").read_text())
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))
    assert split["labels"] == labels and split["eval_digest"] == dataset.split.eval_digest
    assert json.loads((tmp_path / "history.json").read_text())["epochs"]
    loaded = TrainedModel.load(result.checkpoint)
    assert loaded.split == result.split and loaded.spec == result.spec
    assert loaded.evaluation.to_dict() == result.evaluation.to_dict()
    seg = Segmenter.from_checkpoint(result.checkpoint)
    assert seg.predict_proba(np.zeros((3, 96, 96), np.float32)).shape == (96, 96)


@pytest.mark.slow
def test_epoch_stop_rule_gives_the_same_model_twice(prepared_synthetic, tmp_path):
    """The stop rule is the epoch count (the time budget only a cap), so the same command on
    the same machine gives the same weights, threshold and scores, load or no load; with the
    camera augmentation and hard-negative patches of ``make run`` on."""
    augment = dict(blur_p=0.5, gamma_p=0.5, compression_p=0.5, speckle_p=0.5, illumination_p=0.5)
    cfg = TrainConfig(
        **{**TINY, "epochs": 3}, labels="truth", max_minutes=30, hard_negative_fraction=0.5,
        augment=augment,
    )  # fmt: skip
    dataset = split_dataset(open_dataset(prepared_synthetic), cfg)
    runs = [train_model(dataset, cfg, tmp_path / str(i), progress=False) for i in range(2)]
    assert [r.history.stopped for r in runs] == ["completed", "completed"]
    weights = [load_checkpoint(r.checkpoint)[0].state_dict() for r in runs]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=0, atol=0, msg=name)
    assert runs[0].spec.threshold == runs[1].spec.threshold
    assert runs[0].evaluation.to_dict() == runs[1].evaluation.to_dict()


def test_train_step_refuses_non_dataset(tmp_path):
    from pbf_core.errors import DatasetError

    with pytest.raises(DatasetError, match="manifest"):
        open_dataset(tmp_path)


def test_train_step_needs_a_split_for_its_labels(prepared_synthetic, tmp_path):
    from pbf_core.errors import DatasetError

    dataset = open_dataset(prepared_synthetic)
    with pytest.raises(DatasetError, match="no split yet"):
        train_model(dataset, TrainConfig(**TINY), tmp_path, progress=False)
    weak = split_dataset(dataset, TrainConfig(**TINY, labels="weak"))
    with pytest.raises(DatasetError, match="labels=weak, training asks labels=truth"):
        train_model(weak, TrainConfig(**TINY, labels="truth"), tmp_path, progress=False)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_lr_factor_anneals_to_a_small_floor(schedule):
    from pbf_core.model.schedule import lr_factor

    values = [lr_factor(p, schedule) for p in np.linspace(0, 1, 101)]
    assert values[-1] == pytest.approx(1e-3)
    assert max(values) == pytest.approx(1.0, abs=1e-3)
    peak = int(np.argmax(values))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :], strict=False))
    if schedule == "onecycle":
        assert values[0] == pytest.approx(0.04) and peak == 10
    assert lr_factor(2.0, schedule) == values[-1]  # past the budget: stays at the floor
    with pytest.raises(ValueError, match="onecycle, cosine"):
        lr_factor(0.5, "step")


def test_constraints_pin_every_library_the_weights_depend_on():
    """``make install`` installs with constraints.txt: each training library at one version,
    the one installed here, so a fresh clone trains the same weights."""
    import re
    from pathlib import Path

    from pbf_core.bench.machine import TRAINING_LIBRARIES, package_versions

    text = (Path(__file__).resolve().parents[2] / "constraints.txt").read_text()
    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    pins = dict(
        (norm(n), v) for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", text, re.MULTILINE)
    )
    for name, installed in package_versions(TRAINING_LIBRARIES).items():
        assert norm(name) in pins, f"{name} is not pinned in constraints.txt"
        assert installed.split("+")[0] == pins[norm(name)], (
            f"{name} {installed} installed, {pins[norm(name)]} pinned"
        )


def test_flips_go_into_the_models_spec(prepared_synthetic):
    cfg = TrainConfig(**TINY, labels="truth")
    dataset = split_dataset(open_dataset(prepared_synthetic), cfg)
    assert not model_spec(dataset, cfg).flips
    assert model_spec(dataset, cfg.model_copy(update={"flips": True})).flips
