"""Train a segmentation network on defect-biased patches, validated on whole held-out layers.

:func:`fit` is the loop (device, mixed precision, schedule, early stopping, best weights, time
budget, per-epoch callback); :func:`train` is the whole job behind ``pbf train``: split a
prepared dataset by layer, fit, pick the decision threshold on the validation layers' PR curve,
score the test layers against true masks and weak labels, and write a safetensors checkpoint
whose :class:`~pbf_core.models.ModelSpec` carries everything inference needs.

Progress is reported through ``on_epoch_end(metrics: dict)``, never by importing a tracker.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pbf_core.config import TrainConfig
from pbf_core.deploy.inference import torch_predictor
from pbf_core.deploy.tiling import predict_tiled
from pbf_core.evaluation.metrics import threshold_for_dice
from pbf_core.evaluation.scores import validation_curve
from pbf_core.model.devices import autocast, resolve_device, resolve_precision, torch_threads

if TYPE_CHECKING:
    import torch
from pbf_core.model.losses import dice_bce_loss
from pbf_core.model.schedule import lr_factor

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
