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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pbf_core.config import PrepareConfig, TrainConfig
from pbf_core.data.dataset import (
    Manifest,
    Sample,
    data_digest,
    load_manifest,
    load_samples,
    target_of,
)
from pbf_core.data.split import split_layers, stratum_of
from pbf_core.deploy.inference import Segmenter
from pbf_core.errors import DatasetError
from pbf_core.evaluation.metrics import threshold_for_dice, threshold_for_recall
from pbf_core.evaluation.scores import evaluate, predict_samples, validation_curve
from pbf_core.files import write_json
from pbf_core.model.checkpoints import save_checkpoint
from pbf_core.model.devices import resolve_device, torch_threads
from pbf_core.model.factory import create_model
from pbf_core.model.patches import LayerDataset, PatchDataset, build_augmentation
from pbf_core.model.spec import ModelSpec

if TYPE_CHECKING:
    import torch
from pbf_core.model.loop import EpochCallback, History, fit, seed_everything
from pbf_core.model.losses import dice_bce_loss

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
