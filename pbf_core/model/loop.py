"""The training loop: :func:`train_step` on patches, :func:`eval_step` on whole validation layers,
and :func:`fit` around them (device, mixed precision, schedule, early stopping, best weights,
time budget, per-epoch callback).

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

from pbf_core.bench.machine import training_environment
from pbf_core.config import TrainConfig
from pbf_core.deploy.inference import torch_predictor
from pbf_core.deploy.tiling import predict_tiled
from pbf_core.evaluation.metrics import threshold_for_dice, validation_curve
from pbf_core.model.averaging import WeightAverage
from pbf_core.model.devices import autocast, resolve_device, resolve_precision, torch_threads
from pbf_core.model.losses import dice_bce_loss
from pbf_core.model.schedule import lr_factor

if TYPE_CHECKING:
    import torch

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
        environment: Python, the CPU kernels torch picked and the versions of the libraries
            that decide the weights (:data:`~pbf_core.bench.machine.TRAINING_LIBRARIES`): the
            same command trains the same weights only where these are the same too.
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -1.0
    stopped: str = "completed"
    device: str = "cpu"
    precision: str = "float32"
    seconds: float = 0.0
    wall_seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-epoch rows."""
        return {k: v for k, v in self.to_dict().items() if k != "epochs"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's global generator and torch (all devices).

    Our own code draws from explicit generators; the global seeds cover third-party code.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)


#: Share of the time budget spent before the schedule may start to follow the clock.
_PACE_AFTER = 0.5


@dataclass
class BudgetClock:
    """The time budget's clock: elapsed time on ``cfg.budget_clock`` minus callback time.

    ``last_eval_s`` (how long the last validation took) is kept free at the end of an epoch, so
    the validation of a cut-short epoch still fits the budget.

    The budget is a cap: the learning-rate schedule runs over the steps, so the same command
    trains the same model on a quiet or a busy machine. Only once half the budget is spent and
    the run is behind the pace that fits every step into it does the schedule follow the clock
    too (``paced``): from where the steps had taken it, on to the end of the schedule when the
    budget ends, so a run the budget cuts still anneals. Deciding that no earlier keeps a slow
    start (a first epoch beside other jobs) from changing the schedule of a run that fits.
    """

    budget_s: float
    tick: Callable[[], float]
    start: float
    callback_s: float = 0.0
    last_eval_s: float = 0.0
    paced_from: tuple[float, float] | None = None  # (step fraction, elapsed s) when paced

    @property
    def paced(self) -> bool:
        return self.paced_from is not None

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> BudgetClock:
        tick = time.process_time if cfg.budget_clock == "process" else time.perf_counter
        budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        return cls(budget, tick, tick())

    def elapsed(self) -> float:
        return self.tick() - self.start - self.callback_s

    def fraction(self) -> float:
        return self.elapsed() / self.budget_s

    def schedule_progress(self, steps: float) -> float:
        """Where the schedule stands after the fraction ``steps`` of all steps."""
        if self.paced_from is None:
            return steps
        steps0, t0 = self.paced_from
        clock = steps0 + (1 - steps0) * (self.elapsed() - t0) / max(self.budget_s - t0, 1e-9)
        return max(steps, clock)

    def check_pace(self, steps: float) -> None:
        """After an epoch: from half the budget on, follow the clock if the steps will not fit."""
        if not self.paced and self.fraction() >= _PACE_AFTER and self.fraction() > steps:
            self.paced_from = (steps, self.elapsed())

    def no_time_for_a_step(self) -> bool:
        return self.elapsed() + self.last_eval_s >= self.budget_s

    def spent(self) -> bool:
        return self.elapsed() >= self.budget_s


@dataclass(frozen=True)
class _Run:
    """What every step of one fit shares."""

    model: Any
    optimizer: Any
    scaler: Any
    device: Any
    dtype: Any
    cfg: TrainConfig
    average: WeightAverage | None = None  # with cfg.ema_decay: what is validated and kept

    @property
    def scored(self) -> torch.nn.Module:
        """The network validation scores and training keeps: the weight average if any."""
        return self.model if self.average is None else self.average.model


def train_step(run: _Run, batch: dict[str, torch.Tensor], lr: float) -> float:
    """One optimizer step on a batch of patches at learning rate ``lr``; returns the loss."""
    import torch

    cfg, model = run.cfg, run.model
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    x = batch["image"].to(run.device, non_blocking=True)
    y = batch["target"].to(run.device, non_blocking=True)
    valid, weight = batch.get("valid"), batch.get("weight")  # doubtful pixels; small defects
    if valid is not None:
        valid = valid.to(run.device, non_blocking=True)
    if weight is not None:
        weight = weight.to(run.device, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(run.device, run.dtype):
        logits = model(x)
    loss = dice_bce_loss(logits, y, cfg.pos_weight, cfg.dice_weight, valid, weight)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.average is not None:
        run.average.update(model)
    return float(loss.detach())


def eval_step(run: _Run, layers: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
    """Predict every validation layer whole (tiled, as inference does); score the best Dice.

    Returns:
        ``val_dice`` (best over thresholds), ``val_threshold``, ``val_precision``,
        ``val_recall`` there, and ``val_ap``.

    Raises:
        ValueError: no validation layer.
    """
    cfg = run.cfg
    predict = torch_predictor(run.scored, run.device, run.dtype, cfg.channels_last)
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


def _train_epoch(
    run: _Run, loader: Iterable, epoch: int, clock: BudgetClock, progress: bool
) -> tuple[list[float], float, bool]:
    """Up to ``steps_per_epoch`` steps; returns the losses, the last rate, whether time ran out."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    run.model.train()
    losses: list[float] = []
    lr, total = cfg.lr, cfg.epochs * cfg.steps_per_epoch
    bar = tqdm(
        total=cfg.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress
    )
    batches = iter(loader)
    while len(losses) < cfg.steps_per_epoch:
        if clock.no_time_for_a_step():
            bar.close()
            return losses, lr, True
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        done = epoch * cfg.steps_per_epoch + len(losses)
        lr = cfg.lr * lr_factor(clock.schedule_progress(done / total), cfg.schedule)
        losses.append(train_step(run, batch, lr))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    return losses, lr, False


def fit(
    model: torch.nn.Module,
    train_loader: Iterable[dict[str, torch.Tensor]],
    val_loader: Iterable[dict[str, np.ndarray]],
    cfg: TrainConfig,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` in place; at the end it holds the weights of the best validation epoch
    (of the last epoch with ``cfg.keep == "last"``).

    Each epoch runs ``cfg.steps_per_epoch`` optimizer steps (AdamW, one-cycle or cosine
    schedule over all steps; over ``cfg.max_minutes`` once an epoch ends behind the pace that
    fits all steps into it, see :class:`BudgetClock`), then predicts
    every validation layer whole (tiled, as inference does) and scores the
    best-over-thresholds pixel Dice. Training stops after ``cfg.epochs``,
    after ``cfg.patience`` epochs without improvement, or when ``cfg.max_minutes`` is spent on
    ``cfg.budget_clock`` (validation included, time spent in ``on_epoch_end`` excluded).

    Args:
        model: logits network ``(N, C, h, w) → (N, 1, h, w)``.
        train_loader: batches ``{"image": (N, C, p, p), "target": (N, 1, p, p)}`` float32
            (e.g. a DataLoader over :class:`pbf_core.model.patches.PatchDataset`); re-iterated
            each epoch, ``set_epoch`` called on its dataset when present.
        val_loader: whole layers ``{"image": (C, H, W) float32, "target": (H, W) bool}`` (e.g.
            :class:`pbf_core.model.patches.LayerDataset`).
        cfg: device, precision, optimisation and stopping settings.
        on_epoch_end: called with each epoch's metrics dict (plus ``is_best``).
        progress: draw a tqdm bar per epoch on stderr.

    Raises:
        DeviceError: the requested device or precision is not available.
    """
    with torch_threads(cfg.threads):
        return _fit(model, train_loader, val_loader, cfg, on_epoch_end, progress)


def _start(model: torch.nn.Module, cfg: TrainConfig) -> _Run:
    import torch

    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    return _Run(model, opt, scaler, device, dtype, cfg, average)


def _fit(
    model: torch.nn.Module,
    train_loader: Iterable[dict[str, torch.Tensor]],
    val_loader: Iterable[dict[str, np.ndarray]],
    cfg: TrainConfig,
    on_epoch_end: EpochCallback | None,
    progress: bool,
) -> History:
    import torch

    wall_start, clock = time.perf_counter(), BudgetClock.for_config(cfg)
    run = _start(model, cfg)
    dtype_name = "float32" if run.dtype is None else str(run.dtype).removeprefix("torch.")
    history = History(
        device=str(run.device), precision=dtype_name, environment=training_environment()
    )
    best_state, stale = None, 0
    for epoch in range(cfg.epochs):
        losses, lr, out_of_time = _train_epoch(run, train_loader, epoch, clock, progress)
        if not losses:
            history.stopped = "time_budget"
            break
        t_eval = clock.tick()
        metrics = eval_step(run, val_loader)
        clock.last_eval_s = clock.tick() - t_eval
        metrics = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": lr,
                   "steps": len(losses), **metrics, "elapsed_s": clock.elapsed(),
                   "wall_s": time.perf_counter() - wall_start}  # fmt: skip
        is_best = metrics["val_dice"] > history.best_score
        if is_best:
            history.best_score, history.best_epoch, stale = metrics["val_dice"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in run.scored.state_dict().items()}
        else:
            stale += 1
        history.epochs.append(metrics)
        _report(metrics, is_best, on_epoch_end, clock, progress)
        if out_of_time or clock.spent():
            history.stopped = "time_budget"
            break
        if stale >= cfg.patience:
            history.stopped = "early_stopping"
            break
        clock.check_pace((epoch + 1) / cfg.epochs)
    if best_state is not None and cfg.keep == "best":
        model.load_state_dict(best_state)
    elif run.average is not None:  # keep == "last": the average's last weights
        model.load_state_dict(run.average.model.state_dict())
    model.to(memory_format=torch.contiguous_format).eval()
    history.seconds, history.wall_seconds = clock.elapsed(), time.perf_counter() - wall_start
    return history


def _report(
    metrics: dict[str, float],
    is_best: bool,
    on_epoch_end: EpochCallback | None,
    clock: BudgetClock,
    progress: bool,
) -> None:
    """Print the epoch's line and call the callback (its time is not the budget's)."""
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(
            f"epoch {metrics['epoch'] + 1}: loss {metrics['train_loss']:.4f} val dice "
            f"{metrics['val_dice']:.4f} (th {metrics['val_threshold']:.3f}) "
            f"recall {metrics['val_recall']:.4f} {metrics['elapsed_s']:.0f}s"
            + (" *" if is_best else "")
        )
    if on_epoch_end is not None:
        t_cb = clock.tick()
        on_epoch_end({**metrics, "is_best": float(is_best)})
        clock.callback_s += clock.tick() - t_cb
