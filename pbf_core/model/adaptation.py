"""The adapt step: fine-tune a model on a user's unlabelled layers with pseudo-labels, gated.

:func:`adapt_model` (``pbf adapt`` and the ``adapt-model`` flow) takes a trained model and a
prepared, split dataset of the user's own printer:

1. the model is fitted to the dataset's views (a triplet model folds into a single-view one,
   :func:`pbf_core.model.views.single_view`) and scored on the split's evaluation layers
   (against true masks when the user has some, else weak labels) and on freshly rendered
   synthetic *guard* layers (``AdaptConfig.guard_style``);
2. the train and validation layers are pseudo-labelled (:mod:`pbf_core.model.pseudo_labels`):
   no true mask is ever read for them;
3. the model is fine-tuned on patches of the train layers, the doubtful pixels left out of the
   loss, mixed with ``rehearsal_layers`` fresh synthetic layers of the guard family and their
   true masks (rehearsal: without it the model forgets part of what it knew), for a fixed number of steps (cosine decay), and keeps its last weights: the validation
   layers' pseudo-labels hold too few confirmed defects to pick an epoch by (their agreement is
   only reported per epoch);
4. the gate: the adapted model is accepted only when its Dice on the evaluation layers gains
   at least ``min_gain`` and its guard Dice drops at most ``max_source_drop``.

The decision threshold is the source model's: without true masks there is nothing honest to
recalibrate it on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pbf_core.config import AdaptConfig, TrainConfig
from pbf_core.data.dataset import PreparedDataset, Sample, data_digest
from pbf_core.deploy.inference import Segmenter
from pbf_core.deploy.inputs import keep_to_bed, prepare_input
from pbf_core.deploy.tiling import mirror_average
from pbf_core.errors import DatasetError
from pbf_core.evaluation.robustness import held_out_layers, model_masks, score_layers
from pbf_core.evaluation.scores import Evaluation, evaluate
from pbf_core.files import write_json
from pbf_core.model.checkpoints import load_checkpoint, save_checkpoint
from pbf_core.model.devices import resolve_device, torch_threads
from pbf_core.model.loop import History, fit
from pbf_core.model.patches import LayerDataset, PatchDataset, build_augmentation
from pbf_core.model.pseudo_labels import PseudoLabel, pseudo_label
from pbf_core.model.spec import ModelSpec
from pbf_core.model.views import single_view

if TYPE_CHECKING:
    import torch

CHECKPOINT = "model.safetensors"


@dataclass(frozen=True)
class AdaptedModel:
    """An adapted model, the source it came from, and the gate's verdict.

    Attributes:
        checkpoint: the adapted ``model.safetensors`` (written whatever the verdict).
        spec: its spec (the source's threshold; views of the user's dataset).
        source: the model file it was adapted from.
        accepted: whether the gate accepts it; ``reason`` says why.
        before, after: source and adapted model on the split's evaluation layers.
        guard_before, guard_after: their scores on the synthetic guard layers (empty: no guard).
        pseudo: pseudo-label counts over the train and validation layers.
        history: what the fine-tune did.
    """

    checkpoint: Path
    spec: ModelSpec
    source: Path
    accepted: bool
    reason: str
    before: Evaluation
    after: Evaluation
    guard_before: dict[str, float] = field(default_factory=dict)
    guard_after: dict[str, float] = field(default_factory=dict)
    pseudo: dict[str, float] = field(default_factory=dict)
    history: History = field(default_factory=History)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: ``adapt/{before,after}/<labels>/<score>``, guard, counts."""
        out = {**self.before.metrics("adapt/before"), **self.after.metrics("adapt/after")}
        out.update({f"adapt/guard/before/{k}": v for k, v in self.guard_before.items()})
        out.update({f"adapt/guard/after/{k}": v for k, v in self.guard_after.items()})
        out.update({f"adapt/pseudo/{k}": float(v) for k, v in self.pseudo.items()})
        out["adapt/accepted"] = float(self.accepted)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "source": str(self.source),
            "accepted": self.accepted,
            "reason": self.reason,
            "threshold": self.spec.threshold,
            "views": list(self.spec.views),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "guard_before": self.guard_before,
            "guard_after": self.guard_after,
            "pseudo": self.pseudo,
            "history": self.history.summary(),
        }


def source_model(path: str | Path, dataset: PreparedDataset) -> tuple[torch.nn.Module, ModelSpec]:
    """The model at ``path`` fitted to the dataset's views (a triplet folded to one view).

    Raises:
        CheckpointError: not a pbf checkpoint.
        DatasetError: views the model cannot take (other than one view for a triplet model).
    """
    model, spec = load_checkpoint(path)
    if spec.views == dataset.views:
        return model, spec
    if dataset.channels == 1:
        return single_view(model, spec, dataset.views[0])
    raise DatasetError(
        dataset.path,
        f"the model takes views {spec.views}, the dataset has {dataset.views}",
    )


def finetune_config(train: TrainConfig, cfg: AdaptConfig) -> TrainConfig:
    """The training settings of the fine-tune: the preset's, with the adaptation's schedule."""
    return train.model_copy(
        update={
            "epochs": cfg.epochs,
            "steps_per_epoch": cfg.steps_per_epoch,
            "lr": cfg.lr,
            "schedule": "cosine",
            "patience": cfg.epochs,
            "keep": "last",
            "max_minutes": cfg.max_minutes,
            "labels": "weak",
        }
    )


def label_layers(
    segmenter: Segmenter, samples: list[Sample], cfg: AdaptConfig, progress: bool = False
) -> list[PseudoLabel]:
    """Pseudo-label each layer with the segmenter's (mirror-averaged) predictions, kept to the
    layer's powder bed for a ``bed_only`` model as every other prediction is."""
    from tqdm.auto import tqdm

    th, out = segmenter.spec.threshold, []
    for s in tqdm(samples, desc="pseudo-labelling", disable=not progress):
        # a flips model already averages its mirror images: not nine predictions, three
        flips = cfg.flips and not segmenter.spec.flips
        prob = mirror_average(segmenter.predict_proba, s.image, flips)
        prob = keep_to_bed(prob, s.image, segmenter.spec, s.bed)
        out.append(pseudo_label(prob, s.weak, th, cfg))
    return out


def guard_layers(cfg: AdaptConfig) -> list:
    """``cfg.guard_layers`` fresh synthetic layers of the guard family (rendered once per run)."""
    if cfg.guard_layers < 1:
        return []
    return held_out_layers(cfg.guard_style, cfg.guard_layers, cfg.guard_size, cfg.guard_seed)


def guard_scores(segmenter: Segmenter, layers: list) -> dict[str, float]:
    """The segmenter on the guard layers ({} when there are none)."""
    return score_layers(model_masks(segmenter), layers) if layers else {}


def decide_adaptation(
    before: Evaluation,
    after: Evaluation,
    guard: tuple[dict[str, float], dict[str, float]],
    cfg: AdaptConfig,
) -> tuple[bool, str]:
    """The gate: Dice on the evaluation layers must gain ``min_gain``, guard Dice may drop
    ``max_source_drop`` at most. Returns ``(accepted, reason)``."""
    ref = "true masks" if after.truth is not None else "weak labels (no true masks)"
    b, a = before.primary.pixel["dice"], after.primary.pixel["dice"]
    line = f"Dice against {ref} on {after.layers} held-back layer(s): {a:.3f} (was {b:.3f})"
    if a < b + cfg.min_gain:
        return False, f"{line}, short of the asked gain {cfg.min_gain:+.3f}"
    g_before, g_after = guard
    if g_before:
        drop = g_before["dice"] - g_after["dice"]
        if drop > cfg.max_source_drop:
            return False, (
                f"{line}, but it forgets the {cfg.guard_style} layers: Dice "
                f"{g_after['dice']:.3f} (was {g_before['dice']:.3f}), "
                f"a drop above {cfg.max_source_drop:.3f}"
            )
    return True, line


def _pseudo_summary(labels: list[PseudoLabel]) -> dict[str, float]:
    pixels = sum(p.target.size for p in labels) or 1
    out: dict[str, float] = {
        k: float(sum(p.counts[k] for p in labels)) for k in ("defect", "doubtful", "background")
    }
    out["defect_share"] = sum(int(p.target.sum()) for p in labels) / pixels
    out["ignored_share"] = sum(int(p.ignore.sum()) for p in labels) / pixels
    return out


def rehearsal(spec: ModelSpec, cfg: AdaptConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Fresh guard-family layers as the model's input, and their true masks."""
    if cfg.rehearsal_layers < 1:
        return [], []
    layers = held_out_layers(
        cfg.guard_style, cfg.rehearsal_layers, cfg.guard_size, cfg.rehearsal_seed
    )
    images = [prepare_input(x.views if spec.in_channels > 1 else x.views[0], spec) for x in layers]
    return images, [x.truth for x in layers]


def adaptation_patches(
    train: list[Sample],
    pseudo: list[PseudoLabel],
    rehearsed: tuple[list[np.ndarray], list[np.ndarray]],
    cfg: TrainConfig,
) -> PatchDataset:
    """Patches of the pseudo-labelled train layers (their doubtful pixels ignored) and of the
    rehearsal layers with their truth, drawn and weighted as the preset's training does."""
    images, truths = rehearsed
    return PatchDataset(
        [s.image for s in train] + images,
        [p.target for p in pseudo] + truths,
        cfg.patch_size,
        cfg.steps_per_epoch * cfg.batch_size,
        cfg.positive_fraction,
        build_augmentation(cfg.augment, cfg.seed),
        cfg.seed,
        hard_negative_fraction=cfg.hard_negative_fraction,
        ignore=[p.ignore for p in pseudo] + [np.zeros_like(t) for t in truths],
        small_defect_weight=cfg.small_defect_weight,
        droplet_p=cfg.augment.droplet_p,
    )


def _finetune(
    model: torch.nn.Module,
    spec: ModelSpec,
    samples: dict[str, list[Sample]],
    labels: dict[str, list[PseudoLabel]],
    cfgs: tuple[TrainConfig, AdaptConfig],
    progress: bool,
) -> History:
    """Fit ``model`` in place on patches of the pseudo-labelled train layers and rehearsal."""
    cfg, adapt = cfgs
    patches = adaptation_patches(samples["train"], labels["train"], rehearsal(spec, adapt), cfg)
    from torch.utils.data import DataLoader

    loader = DataLoader(patches, batch_size=cfg.batch_size, shuffle=False, drop_last=True)
    val_part = "val" if samples["val"] else "train"
    val = LayerDataset([s.image for s in samples[val_part]], [p.target for p in labels[val_part]])
    return fit(model, loader, val, cfg, progress=progress)


def adapt_model(
    model: str | Path,
    dataset: PreparedDataset,
    cfg: AdaptConfig,
    train: TrainConfig,
    out: str | Path,
    progress: bool = True,
) -> AdaptedModel:
    """Adapt ``model`` to the layers of ``dataset`` (see the module docstring); write into ``out``.

    Writes ``model.safetensors`` (the adapted model, whatever the verdict), ``adaptation.json``
    (the verdict, before/after and guard scores, pseudo-label counts), ``metrics.json``,
    ``history.json`` and ``split.json``.

    Args:
        model: the source ``.safetensors`` checkpoint.
        dataset: the user's prepared dataset carrying its split (weak labels, true masks
            only where the user has them: used to score, never to train).
        cfg: pseudo-labelling, schedule and gate settings.
        train: the training preset (patches, batch, augmentation, device, threads).
        out: output directory.

    Raises:
        CheckpointError, DatasetError: unreadable model, views it cannot take, no split,
            or no train layer.
    """
    split, ft = dataset.require_split(), finetune_config(train, cfg)
    samples = {p: dataset.samples(split.part(p)) for p in ("train", "val")}
    samples["eval"] = dataset.samples(split.eval_ids)
    if not samples["train"]:
        raise DatasetError(dataset.path, "the split has no train layer to adapt on")
    net, spec = source_model(model, dataset)
    device = str(resolve_device(ft.device))
    with torch_threads(ft.threads):
        segmenter = Segmenter.from_model(net, spec, device=device)
        guard = guard_layers(cfg)
        before, g_before = evaluate(segmenter, samples["eval"]), guard_scores(segmenter, guard)
        labels = {p: label_layers(segmenter, samples[p], cfg, progress) for p in ("train", "val")}
    history = _finetune(net, spec, samples, labels, (ft, cfg), progress)
    with torch_threads(ft.threads):
        segmenter = Segmenter.from_model(net, spec, device=device)
        after, g_after = evaluate(segmenter, samples["eval"]), guard_scores(segmenter, guard)
    accepted, reason = decide_adaptation(before, after, (g_before, g_after), cfg)
    spec = _adapted_spec(spec, dataset, after)
    out = Path(out)
    adapted = AdaptedModel(
        save_checkpoint(out / CHECKPOINT, net.cpu(), spec), spec, Path(model), accepted, reason,
        before, after, g_before, g_after, _pseudo_summary(labels["train"] + labels["val"]),
        history,
    )  # fmt: skip
    _write_reports(out, adapted, split)
    return adapted


def _adapted_spec(spec: ModelSpec, dataset: PreparedDataset, after: Evaluation) -> ModelSpec:
    """The source's spec (threshold, views) with the adapted model's lineage and scores."""
    train = dataset.entries(dataset.require_split().train)
    return spec.model_copy(
        update={
            "labels": "weak",
            "train_data_digest": data_digest(dataset.path, train),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": after.primary.headline,
        }
    )


def _write_reports(out: Path, adapted: AdaptedModel, split) -> None:
    write_json(out / "adaptation.json", adapted.to_dict())
    write_json(
        out / "metrics.json", {**adapted.after.to_dict(), "evaluated_on": split.evaluated_on}
    )
    write_json(out / "history.json", adapted.history.to_dict())
    split.save(out / "split.json")
