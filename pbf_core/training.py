"""Train a segmentation network on defect-biased patches, validated on whole held-out layers.

:func:`fit` is the loop (device, mixed precision, schedule, early stopping, best weights, time
budget, per-epoch callback); :func:`train` is the whole job behind ``pbf train``: split a
prepared dataset by layer, fit, pick the decision threshold on the validation layers' PR curve,
score the test layers against true masks and weak labels, and write a safetensors checkpoint
whose :class:`~pbf_core.models.ModelSpec` carries everything inference needs.

Progress is reported through ``on_epoch_end(metrics: dict)``, never by importing a tracker.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pbf_core.config import PrepareConfig, TrainConfig
from pbf_core.datasets import Manifest, Sample, load_manifest, write_json
from pbf_core.devices import autocast, resolve_device, resolve_precision, torch_threads
from pbf_core.errors import DatasetError
from pbf_core.evaluation import evaluate, predict_samples, validation_curve
from pbf_core.inference import Segmenter, predict_tiled, torch_predictor
from pbf_core.metrics import threshold_for_dice, threshold_for_recall
from pbf_core.models import ModelSpec, create_model, save_checkpoint
from pbf_core.patches import (
    LayerDataset,
    PatchDataset,
    build_augmentation,
    data_digest,
    load_samples,
    split_layers,
    stratum_of,
    target_of,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "History",
    "TrainingSetup",
    "dice_bce_loss",
    "fit",
    "resolve_device",
    "seed_everything",
    "setup_training",
    "train",
]

EpochCallback = Callable[[dict[str, float]], None]


@dataclass
class History:
    """What :func:`fit` did.

    Attributes:
        epochs: one metrics dict per epoch (``epoch``, ``train_loss``, ``lr``, ``val_dice``,
            ``val_threshold``, ``val_ap``, ``val_recall``, ``val_precision``, ``elapsed_s`` on
            the budget clock, ``wall_s``).
        best_epoch: epoch whose weights the model holds at the end.
        best_score: its validation Dice (best over thresholds).
        stopped: ``completed``, ``early_stopping`` or ``time_budget``.
        device, precision: where and how it ran (``float32``/``bfloat16``/``float16``).
        seconds: duration of the fit on ``cfg.budget_clock`` (s), without the time spent in
            ``on_epoch_end``.
        wall_seconds: wall time of the whole fit (s), callbacks included.
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -1.0
    stopped: str = "completed"
    device: str = "cpu"
    precision: str = "float32"
    seconds: float = 0.0
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's global generator and torch (all devices).

    Our own code draws from explicit generators; the global seeds cover third-party code.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)


def dice_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """BCE (defect pixels weighted ``pos_weight``) + ``dice_weight`` × soft Dice loss.

    The Dice term is computed over the whole batch (not per patch), so patches without defects
    do not push towards an empty prediction with a Dice of 0/0.

    Args:
        logits, target: ``(N, 1, H, W)`` float; target in {0, 1}.
    """
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits

    logits = logits.float()
    weight = torch.tensor(pos_weight, device=logits.device)
    bce = binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
    if dice_weight == 0:
        return bce
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)
    return bce + dice_weight * dice


def lr_factor(progress: float, schedule: str, warmup: float = 0.1) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of the run.

    ``onecycle``: cosine warm-up from 1/25 over the first ``warmup`` fraction, then cosine
    decay to 1/1000; ``cosine``: cosine decay from 1 to 1/1000. Progress is the larger of the
    step fraction and the time-budget fraction, so a run cut by ``max_minutes`` still anneals
    instead of stopping at a high rate.
    """
    p = min(max(progress, 0.0), 1.0)
    floor = 1e-3
    if schedule == "onecycle":
        if p < warmup:
            return 0.04 + 0.96 * (1 - math.cos(math.pi * p / warmup)) / 2
        p = (p - warmup) / (1 - warmup)
    elif schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; valid: onecycle, cosine")
    return floor + (1 - floor) * (1 + math.cos(math.pi * p)) / 2


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def _validate(
    model: torch.nn.Module,
    layers: Iterable[dict[str, np.ndarray]],
    predict_args: tuple,
    cfg: TrainConfig,
) -> dict[str, float]:
    predict = torch_predictor(model, *predict_args)
    probs, targets = [], []
    for item in layers:
        probs.append(predict_tiled(predict, item["image"], cfg.tile_size, cfg.tile_overlap))
        targets.append(np.asarray(item["target"], bool))
    if not probs:
        raise ValueError("the validation set is empty; give it at least one layer")
    curve = validation_curve(probs, targets)
    th = threshold_for_dice(curve)
    i = int(np.searchsorted(curve.thresholds, th))
    return {
        "val_dice": float(curve.dice[i]),
        "val_threshold": th,
        "val_precision": float(curve.precision[i]),
        "val_recall": float(curve.recall[i]),
        "val_ap": curve.average_precision(),
    }


def fit(
    model: torch.nn.Module,
    train_loader: Iterable[dict[str, torch.Tensor]],
    val_loader: Iterable[dict[str, np.ndarray]],
    cfg: TrainConfig,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` in place; at the end it holds the weights of the best validation epoch.

    Each epoch runs ``cfg.steps_per_epoch`` optimizer steps (AdamW, one-cycle or cosine
    schedule over all steps or over ``cfg.max_minutes``, whichever ends first), then predicts
    every validation layer whole (tiled, as inference does) and scores the
    best-over-thresholds pixel Dice. Training stops after ``cfg.epochs``,
    after ``cfg.patience`` epochs without improvement, or when ``cfg.max_minutes`` is spent on
    ``cfg.budget_clock`` (validation included, time spent in ``on_epoch_end`` excluded).

    Args:
        model: logits network ``(N, C, h, w) → (N, 1, h, w)``.
        train_loader: batches ``{"image": (N, C, p, p), "target": (N, 1, p, p)}`` float32
            (e.g. a DataLoader over :class:`pbf_core.patches.PatchDataset`); re-iterated each
            epoch, ``set_epoch`` called on its dataset when present.
        val_loader: whole layers ``{"image": (C, H, W) float32, "target": (H, W) bool}`` (e.g.
            :class:`pbf_core.patches.LayerDataset`).
        cfg: device, precision, optimisation and stopping settings.
        on_epoch_end: called with each epoch's metrics dict (plus ``is_best``).
        progress: draw a tqdm bar per epoch on stderr.

    Raises:
        DeviceError: the requested device or precision is not available.
    """
    with torch_threads(cfg.threads):
        return _fit(model, train_loader, val_loader, cfg, on_epoch_end, progress)


def _fit(
    model: torch.nn.Module,
    train_loader: Iterable[dict[str, torch.Tensor]],
    val_loader: Iterable[dict[str, np.ndarray]],
    cfg: TrainConfig,
    on_epoch_end: EpochCallback | None,
    progress: bool,
) -> History:
    import torch
    from tqdm.auto import tqdm

    # the budget's clock: wall time, or this process's CPU time on a shared machine
    clock = time.process_time if cfg.budget_clock == "process" else time.perf_counter
    wall_start = time.perf_counter()
    start = clock()
    callback_s = 0.0  # time spent in on_epoch_end: the caller's, not training's
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    history = History(device=str(device), precision=_dtype_name(dtype))
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    val_s = 0.0
    dataset = getattr(train_loader, "dataset", None)
    for epoch in range(cfg.epochs):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        model.train()
        losses: list[float] = []
        out_of_time = False
        bar = tqdm(
            total=cfg.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress
        )
        batches = iter(train_loader)
        while len(losses) < cfg.steps_per_epoch:
            # leave time for this epoch's validation (as long as the last one took)
            if clock() - start - callback_s + val_s >= budget_s:
                out_of_time = True
                break
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(train_loader)
                batch = next(batches)
            done = epoch * cfg.steps_per_epoch + len(losses)
            progress_now = max(done / total, (clock() - start - callback_s) / budget_s)
            lr = cfg.lr * lr_factor(progress_now, cfg.schedule)
            for group in opt.param_groups:
                group["lr"] = lr
            x = batch["image"].to(device, non_blocking=True)
            y = batch["target"].to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                logits = model(x)
            loss = dice_bce_loss(logits, y, cfg.pos_weight, cfg.dice_weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        if not losses:
            history.stopped = "time_budget"
            break
        t_val = clock()
        metrics = _validate(model, val_loader, (device, dtype, cfg.channels_last), cfg)
        val_s = clock() - t_val
        metrics = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "lr": lr,
            "steps": len(losses),
            **metrics,
            "elapsed_s": clock() - start - callback_s,
            "wall_s": time.perf_counter() - wall_start,
        }
        is_best = metrics["val_dice"] > history.best_score
        if is_best:
            history.best_score, history.best_epoch, stale = metrics["val_dice"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        history.epochs.append(metrics)
        if progress:
            tqdm.write(
                f"epoch {epoch + 1}: loss {metrics['train_loss']:.4f} val dice "
                f"{metrics['val_dice']:.4f} (th {metrics['val_threshold']:.3f}) "
                f"recall {metrics['val_recall']:.4f} {metrics['elapsed_s']:.0f}s"
                + (" *" if is_best else "")
            )
        if on_epoch_end is not None:
            t_cb = clock()
            on_epoch_end({**metrics, "is_best": float(is_best)})
            callback_s += clock() - t_cb
        if out_of_time or clock() - start - callback_s >= budget_s:
            history.stopped = "time_budget"
            break
        if stale >= cfg.patience:
            history.stopped = "early_stopping"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format).eval()
    history.seconds = clock() - start - callback_s
    history.wall_seconds = time.perf_counter() - wall_start
    return history


def _prepare_settings(root: Path) -> PrepareConfig:
    """The normalisation the dataset was prepared with (``report.json``), defaults otherwise."""
    report = root / "report.json"
    if report.is_file():
        cfg = json.loads(report.read_text()).get("config")
        if cfg:
            return PrepareConfig.model_validate(cfg)
    return PrepareConfig()


@dataclass
class TrainResult:
    """Outputs of :func:`train`: checkpoint path, spec, fit history, test metrics, split."""

    checkpoint: Path
    spec: ModelSpec
    history: History
    metrics: dict
    split: dict[str, list[str]]


def pick_threshold(
    probs: Sequence[np.ndarray], targets: Sequence[np.ndarray], cfg: TrainConfig
) -> float:
    """Decision threshold from the validation layers' pixel PR curve (``cfg.threshold_policy``)."""
    curve = validation_curve(probs, targets)
    if cfg.threshold_policy == "target_recall":
        return threshold_for_recall(curve, cfg.target_recall)
    return threshold_for_dice(curve)


@dataclass
class TrainingSetup:
    """Everything :func:`fit` needs for a prepared dataset, built by :func:`setup_training`.

    Attributes:
        root: dataset directory.
        manifest: its manifest.
        split: layer ids per split.
        samples: loaded layers per split.
        train_loader: DataLoader of defect-biased patches of the train layers.
        val: whole validation layers with their targets.
        model: freshly initialised network.
    """

    root: Path
    manifest: Manifest
    split: dict[str, list[str]]
    samples: dict[str, list[Sample]]
    train_loader: Any
    val: LayerDataset
    model: torch.nn.Module


def setup_training(data: str | Path, cfg: TrainConfig) -> TrainingSetup:
    """Split a prepared dataset by layer, load it, and build the loaders and the model.

    Raises:
        DatasetError: not a prepared dataset, or ``labels=truth`` without true masks.
    """
    from torch.utils.data import DataLoader

    root = Path(data)
    manifest = load_manifest(root)
    entries = list(manifest.layers)
    if cfg.labels == "truth":
        entries = [e for e in entries if e.truth]
        if not entries:
            raise DatasetError(root, "labels=truth but no layer has a true mask; use labels=weak")
    loaded = {s.id: s for s in load_samples(root, entries)}
    strata = None
    if cfg.stratify:
        counts = Counter(
            int(c) for s in loaded.values() if s.types is not None for c in np.unique(s.types)
        )
        strata = {i: stratum_of(s, counts) for i, s in loaded.items()}
    split = split_layers(list(loaded), cfg.split, cfg.seed, strata)
    samples = {name: [loaded[i] for i in ids] for name, ids in split.items()}
    patches = PatchDataset(
        [s.image for s in samples["train"]],
        [target_of(s, cfg.labels) for s in samples["train"]],
        cfg.patch_size,
        cfg.steps_per_epoch * cfg.batch_size,
        cfg.positive_fraction,
        build_augmentation(cfg.augment, cfg.seed),
        cfg.seed,
        types=[s.types for s in samples["train"]],
        balance_types=cfg.balance_types,
    )
    loader = DataLoader(
        patches,
        batch_size=cfg.batch_size,
        shuffle=False,  # items are already random draws
        num_workers=cfg.num_workers,
        drop_last=True,
        persistent_workers=cfg.num_workers > 0,
    )
    val = LayerDataset(
        [s.image for s in samples["val"]], [target_of(s, cfg.labels) for s in samples["val"]]
    )
    m = cfg.model
    model = create_model(
        m.arch,
        m.encoder,
        manifest.channels,
        1,
        m.encoder_weights,
        m.decoder_channels,
        m.head_width,
        m.head,
    )
    return TrainingSetup(root, manifest, split, samples, loader, val, model)


def train(
    data: str | Path,
    out: str | Path,
    cfg: TrainConfig | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train on a prepared dataset and write ``out/model.safetensors`` plus JSON reports.

    Writes ``model.safetensors`` (weights + :class:`ModelSpec`), ``metrics.json`` (test-layer
    scores against truth and weak labels at the chosen threshold), ``history.json`` and
    ``split.json`` (layer ids per split).

    Args:
        data: prepared dataset directory (``pbf prepare`` output).
        out: output directory (created).
        cfg: training settings (defaults if None).
        on_epoch_end: per-epoch metrics callback (e.g. MLflow logging).
        progress: draw progress bars.

    Raises:
        DatasetError: not a prepared dataset, or ``labels=truth`` without true masks.
        DeviceError: the requested device is absent.
    """
    cfg = cfg or TrainConfig()
    out = Path(out)
    setup = setup_training(data, cfg)
    model = setup.model
    history = fit(model, setup.train_loader, setup.val, cfg, on_epoch_end, progress)
    with torch_threads(cfg.threads):
        result = finish_training(setup, history, cfg)
    checkpoint = save_checkpoint(out / "model.safetensors", model.cpu(), result["spec"])
    write_json(out / "metrics.json", result["metrics"])
    write_json(out / "history.json", history.to_dict())
    write_json(out / "split.json", setup.split)
    return TrainResult(checkpoint, result["spec"], history, result["metrics"], setup.split)


def finish_training(setup: TrainingSetup, history: History, cfg: TrainConfig) -> dict:
    """Pick the threshold on the validation layers, score the test layers, build the spec.

    Returns:
        ``{"spec": ModelSpec, "metrics": evaluate(...) dict}``.
    """
    root, manifest, samples, m = setup.root, setup.manifest, setup.samples, cfg.model
    prep = _prepare_settings(root)
    by_id = {e.id: e for e in manifest.layers}
    spec = ModelSpec(
        arch=m.arch,
        encoder=m.encoder,
        in_channels=manifest.channels,
        decoder_channels=m.decoder_channels,
        head=m.head,
        head_width=m.head_width,
        views=manifest.views,
        normalization=prep.normalization,
        percentiles=prep.percentiles,
        tile_size=cfg.tile_size,
        tile_overlap=cfg.tile_overlap,
        labels=cfg.labels,
        train_data_digest=data_digest(root, [by_id[i] for i in setup.split["train"]]),
    )
    # fp32 here: the threshold is picked for, and scored with, what export and serving run.
    segmenter = Segmenter.from_model(setup.model, spec, device=history.device, precision="fp32")
    val_probs = predict_samples(segmenter, samples["val"])
    threshold = pick_threshold(val_probs, list(setup.val.targets), cfg)
    test = samples["test"] or samples["val"]
    metrics = evaluate(segmenter, test, threshold)
    metrics["evaluated_on"] = "test" if samples["test"] else "val"
    headline = metrics["truth"] or metrics["weak"]
    spec = spec.model_copy(
        update={
            "threshold": threshold,
            "metrics": {
                "dice": headline["pixel"]["dice"],
                "recall": headline["pixel"]["recall"],
                "precision": headline["pixel"]["precision"],
                "instance_recall": headline["instance"]["instance_recall"],
                "false_positives_per_image": headline["instance"]["false_positives_per_image"],
            },
        }
    )
    return {"spec": spec, "metrics": metrics}
