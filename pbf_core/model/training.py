"""The train step: a prepared, split dataset → a checkpoint whose spec carries everything
inference needs.

:func:`train_model` (``pbf train`` and the flow's train task) builds the patch loader and the
network (:func:`setup_training`), fits it (:func:`pbf_core.model.loop.fit`), picks the decision
threshold on the validation layers' PR curve and scores the evaluation layers against true masks
and weak labels (:func:`finish_training`), and writes a safetensors checkpoint beside its
``split.json``, ``metrics.json`` and ``history.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pbf_core.config import ModelConfig, PrepareConfig, TrainConfig
from pbf_core.data.dataset import PreparedDataset, Sample, data_digest, target_of
from pbf_core.data.split import SPLIT_NAMES, Split
from pbf_core.deploy.inference import Segmenter
from pbf_core.errors import DatasetError
from pbf_core.evaluation.metrics import threshold_for_dice, threshold_for_recall, validation_curve
from pbf_core.evaluation.scores import Evaluation, evaluate, predict_samples
from pbf_core.files import write_json
from pbf_core.model.checkpoints import read_spec, save_checkpoint
from pbf_core.model.devices import torch_threads
from pbf_core.model.factory import create_model
from pbf_core.model.loop import EpochCallback, History, fit, seed_everything
from pbf_core.model.patches import LayerDataset, PatchDataset, build_augmentation
from pbf_core.model.spec import ModelSpec
from pbf_core.model.visibility import faint_components

if TYPE_CHECKING:
    import torch

CHECKPOINT = "model.safetensors"


@dataclass(frozen=True)
class TrainedModel:
    """A checkpoint and what training learned about it.

    Attributes:
        checkpoint: ``model.safetensors`` (weights + :class:`ModelSpec`).
        spec: the model's spec, decision threshold included.
        split: the split it was trained, tuned and evaluated on.
        history: what the fit did (epochs, stop reason, device, seconds).
        evaluation: scores on the split's evaluation layers at ``spec.threshold``.
    """

    checkpoint: Path
    spec: ModelSpec
    split: Split
    history: History
    evaluation: Evaluation

    @classmethod
    def load(cls, checkpoint: str | Path) -> TrainedModel:
        """Read a checkpoint written by :func:`train_model` and the files beside it.

        Raises:
            CheckpointError: not a pbf checkpoint.
            DatasetError: no ``split.json`` or ``metrics.json`` beside it.
        """
        checkpoint = Path(checkpoint)
        spec, folder = read_spec(checkpoint), checkpoint.parent
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
            history = json.loads((folder / "history.json").read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(folder, f"not a `pbf train` output folder ({exc})") from None
        return cls(
            checkpoint,
            spec,
            Split.load(folder / "split.json"),
            History.from_dict(history),
            Evaluation.from_dict(metrics),
        )


@dataclass
class TrainingSetup:
    """Everything :func:`fit` needs, built by :func:`setup_training`.

    Attributes:
        dataset: the prepared dataset with its split.
        samples: loaded layers per split part.
        train_loader: DataLoader of defect-biased patches of the train layers.
        val: whole validation layers with their targets.
        model: freshly initialised network (seeded by ``cfg.seed``).
    """

    dataset: PreparedDataset
    samples: dict[str, list[Sample]]
    train_loader: Any
    val: LayerDataset
    model: torch.nn.Module


def build_model(cfg: ModelConfig, in_channels: int) -> torch.nn.Module:
    """A freshly initialised network of the configured architecture."""
    return create_model(
        cfg.arch,
        cfg.encoder,
        in_channels,
        1,
        cfg.encoder_weights,
        cfg.decoder_channels,
        cfg.head_width,
        cfg.head,
    )


def _training_split(dataset: PreparedDataset, cfg: TrainConfig) -> Split:
    split = dataset.require_split()
    if split.labels != cfg.labels:
        raise DatasetError(
            dataset.path,
            f"the split was drawn for labels={split.labels}, training asks labels={cfg.labels}",
        )
    return split


def _visible_targets(
    train: Sequence[Sample], cfg: TrainConfig
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The training targets and, with ``cfg.faint_contrast``, the faint defects they leave to
    the loss's ignore mask (:func:`~pbf_core.model.visibility.faint_components`)."""
    targets = [target_of(s, cfg.labels) for s in train]
    if cfg.faint_contrast <= 0:
        return targets, None
    faint = [
        faint_components(s.image, t, cfg.faint_contrast)
        for s, t in zip(train, targets, strict=True)
    ]
    return [t & ~f for t, f in zip(targets, faint, strict=True)], faint


def setup_training(dataset: PreparedDataset, cfg: TrainConfig) -> TrainingSetup:
    """Load the split's layers and build the patch loader, the validation set and the model.

    Raises:
        DatasetError: the dataset has no split, or one drawn for other labels.
    """
    from torch.utils.data import DataLoader

    split = _training_split(dataset, cfg)
    samples = {part: dataset.samples(split.part(part)) for part in SPLIT_NAMES}
    train = samples["train"]
    targets, faint = _visible_targets(train, cfg)
    patches = PatchDataset(
        [s.image for s in train],
        targets,
        cfg.patch_size,
        cfg.steps_per_epoch * cfg.batch_size,
        cfg.positive_fraction,
        build_augmentation(cfg.augment, cfg.seed),
        cfg.seed,
        types=[s.types for s in train],
        balance_types=cfg.balance_types,
        hard_negative_fraction=cfg.hard_negative_fraction,
        small_defect_weight=cfg.small_defect_weight,
        droplet_p=cfg.augment.droplet_p,
        ignore=faint,
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
    seed_everything(cfg.seed)  # the same initial weights in every process
    return TrainingSetup(dataset, samples, loader, val, build_model(cfg.model, dataset.channels))


def pick_threshold(
    probs: Sequence[np.ndarray], targets: Sequence[np.ndarray], cfg: TrainConfig
) -> float:
    """Decision threshold from the validation layers' pixel PR curve (``cfg.threshold_policy``)."""
    curve = validation_curve(probs, targets)
    if cfg.threshold_policy == "target_recall":
        return threshold_for_recall(curve, cfg.target_recall)
    return threshold_for_dice(curve)


def model_spec(dataset: PreparedDataset, cfg: TrainConfig) -> ModelSpec:
    """The spec of a model trained on ``dataset`` (threshold and metrics come later)."""
    prep = PrepareConfig.model_validate(dataset.report.get("config") or {})
    m, split = cfg.model, dataset.require_split()
    return ModelSpec(
        arch=m.arch,
        encoder=m.encoder,
        in_channels=dataset.channels,
        decoder_channels=m.decoder_channels,
        head=m.head,
        head_width=m.head_width,
        views=dataset.views,
        normalization=prep.normalization,
        percentiles=prep.percentiles,
        bed_only=cfg.bed_only,
        tile_size=cfg.tile_size,
        tile_overlap=cfg.tile_overlap,
        flips=cfg.flips,
        labels=cfg.labels,
        train_data_digest=data_digest(dataset.path, dataset.entries(split.train)),
    )


def finish_training(
    setup: TrainingSetup, history: History, cfg: TrainConfig
) -> tuple[ModelSpec, Evaluation]:
    """Pick the threshold on the validation layers, score the evaluation layers, build the spec."""
    spec = model_spec(setup.dataset, cfg)
    # fp32 here: the threshold is picked for, and scored with, what export and serving run.
    segmenter = Segmenter.from_model(setup.model, spec, device=history.device, precision="fp32")
    val_probs = predict_samples(segmenter, setup.samples["val"])
    threshold = pick_threshold(val_probs, list(setup.val.targets), cfg)
    evaluation = evaluate(segmenter, setup.samples["test"] or setup.samples["val"], threshold)
    spec = spec.model_copy(update={"threshold": threshold, "metrics": evaluation.primary.headline})
    return spec, evaluation


def train_model(
    dataset: PreparedDataset,
    cfg: TrainConfig,
    out: str | Path,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
) -> TrainedModel:
    """Train on a split dataset (the pipeline's train step) and write the model into ``out``.

    Writes ``model.safetensors`` (weights + :class:`ModelSpec`), ``metrics.json`` (evaluation
    layers' scores against truth and weak labels at the chosen threshold), ``history.json`` and
    ``split.json``.

    Args:
        dataset: prepared dataset carrying its split (:func:`pbf_core.data.split.split_dataset`).
        cfg: training settings; ``cfg.labels`` must be what the split was drawn for.
        out: output directory (created).
        on_epoch_end: per-epoch metrics callback (e.g. MLflow logging).
        progress: draw progress bars.

    Raises:
        DatasetError: no split, or a split drawn for other labels.
        DeviceError: the requested device is absent.
    """
    out = Path(out)
    setup = setup_training(dataset, cfg)
    history = fit(setup.model, setup.train_loader, setup.val, cfg, on_epoch_end, progress)
    with torch_threads(cfg.threads):
        spec, evaluation = finish_training(setup, history, cfg)
    split = dataset.require_split()
    checkpoint = save_checkpoint(out / CHECKPOINT, setup.model.cpu(), spec)
    write_json(out / "metrics.json", {**evaluation.to_dict(), "evaluated_on": split.evaluated_on})
    write_json(out / "history.json", history.to_dict())
    split.save(out / "split.json")
    return TrainedModel(checkpoint, spec, split, history, evaluation)
