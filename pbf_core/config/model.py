"""Configs of the model stage: the network, patch augmentation, training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pbf_core.config.base import Frozen
from pbf_core.config.data import SynthStyle


class ModelConfig(Frozen):
    """Segmentation network: architecture, encoder and where its initial weights come from."""

    arch: str = Field("unet", description="segmentation-models-pytorch architecture name")
    encoder: str = Field("mobilenet_v2", description="encoder name (smp or tu-<timm model>)")
    encoder_weights: str | None = Field(
        None,
        description="None = random init (offline), 'imagenet' (downloads), or a local weights file",
    )
    decoder_channels: tuple[int, ...] = Field(
        (128, 64, 32, 16, 8),
        description="U-Net decoder widths, one per encoder stage (half smp's default: cheaper)",
    )
    head: Literal["full", "shuffle"] = Field(
        "shuffle",
        description="shuffle: the U-Net decoder stops at half resolution, where the head sees "
        "the input pixels as 2x2 blocks (faster in int8); full: the head runs at full resolution",
    )
    head_width: int = Field(
        32,
        ge=0,
        le=256,
        description="channels of the head over [decoder output, input pixels] (0 = smp's head)",
    )

    @model_validator(mode="after")
    def _check_decoder(self) -> ModelConfig:
        if not self.decoder_channels or any(c < 1 for c in self.decoder_channels):
            raise ValueError(f"decoder_channels must be positive, got {self.decoder_channels}")
        return self


class AugmentConfig(Frozen):
    """Training-time augmentation of patches (albumentations); probabilities per patch."""

    flips: bool = Field(True, description="horizontal/vertical flips and 90° rotations")
    affine_p: float = Field(0.3, ge=0, le=1, description="small scale/rotate/shift")
    brightness_contrast_p: float = Field(0.5, ge=0, le=1)
    noise_p: float = Field(0.3, ge=0, le=1, description="additive Gaussian noise")
    blur_p: float = Field(0.0, ge=0, le=1, description="defocus (Gaussian) or motion blur")
    gamma_p: float = Field(0.0, ge=0, le=1, description="camera response (gamma 0.7-1.5)")
    compression_p: float = Field(0.0, ge=0, le=1, description="JPEG compression (quality 60-95)")
    speckle_p: float = Field(0.0, ge=0, le=1, description="multiplicative per-pixel noise")
    illumination_p: float = Field(
        0.0, ge=0, le=1, description="a lighting gradient across the patch"
    )
    saturation_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description="a brighter exposure that clips: each view saturates at a level drawn in "
        "0.5-0.95 of its range, which is stretched back to 1 (a gain that clips at full scale, "
        "seen through the percentile stretch)",
    )
    blur_sigma: tuple[float, float] = Field(
        (0.3, 1.2), description="defocus blur's Gaussian sigma range (px), with blur_p"
    )
    motion_blur: tuple[int, int] = Field(
        (3, 5), description="motion blur's kernel length range (odd px), with blur_p"
    )
    impulse_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description="hot and dead pixels (0.01-0.2 %), drawn apart in each view, so a one-view "
        "speck is not taken for spatter",
    )
    droplet_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description="a cluster of spatter droplets added to the patch's brighter pixels and to "
        "its target, bright in every view (pbf_core/model/droplets.py): on parts, a layer's "
        "glints outnumber its droplets a hundredfold",
    )

    @model_validator(mode="after")
    def _check_blur_ranges(self) -> AugmentConfig:
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi <= 10:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high <= 10 px, got {lo}, {hi}")
        lo, hi = self.motion_blur
        if not (3 <= lo <= hi <= 31 and lo % 2 and hi % 2):
            raise ValueError(
                f"motion_blur must be odd lengths 3 <= low <= high <= 31, got {lo}, {hi}"
            )
        return self


class TrainConfig(Frozen):
    """U-Net training on patches of prepared layers, validated on whole held-out layers."""

    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    labels: Literal["weak", "truth"] = Field(
        "weak", description="train on weak labels (default: real data has no truth) or true masks"
    )
    split: tuple[float, float, float] = Field(
        (0.7, 0.15, 0.15), description="train/val/test fractions of layers (split by layer)"
    )
    stratify: bool = Field(
        False,
        description="split each group of layers (by the rarest defect type in the layer, from "
        "the per-pixel types of annotated data) in the same proportions",
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 autocast on CPUs with native bf16 and on CUDA, else fp32"
    )
    channels_last: bool = True
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (None = torch's default)"
    )
    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(25, ge=1, description="optimizer steps per epoch")
    batch_size: int = Field(16, ge=1)
    patch_size: int = Field(128, ge=32, description="training patch side (px, multiple of 32)")
    positive_fraction: float = Field(
        0.6, ge=0, le=1, description="fraction of patches placed on a labelled defect"
    )
    hard_negative_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the other patches centred on the most defect-like pixels that are "
        "not defects (part edges, glints, shadows, streaks)",
    )
    small_defect_weight: float = Field(
        0.0,
        ge=0,
        le=15,
        description="extra BCE weight of small defects (0 = off): a defect pixel of a component "
        "of A px weighs sqrt(64 / A), from 1 at 64 px up to 1 + this (a 4 px spatter droplet: "
        "4 with 3), so the loss counts droplets and pores, not only the big defects' pixels",
    )
    faint_contrast: float = Field(
        0.0,
        ge=0,
        le=1,
        description="leave a labelled defect out of the loss when its faintest view shows it by "
        "less than this (normalised scale; 0 = off): a droplet that one light drowns in a bright "
        "part looks like a glint there, and teaching both ways makes a network ignore every "
        "spot on a part (pbf_core/model/visibility.py); such defects still count when scored",
    )
    balance_types: bool = Field(
        False,
        description="place a positive patch on a defect type drawn uniformly first, then on an "
        "instance of it (needs per-pixel types; else instances are drawn uniformly)",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    lr: float = Field(2e-3, gt=0, description="peak AdamW learning rate (3e-3 oscillated more)")
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    pos_weight: float = Field(3.0, gt=0, description="BCE weight of defect pixels")
    dice_weight: float = Field(1.0, ge=0, description="loss = BCE + dice_weight * soft Dice")
    patience: int = Field(8, ge=1, description="epochs without validation gain before stopping")
    keep: Literal["best", "last"] = Field(
        "best",
        description="weights kept at the end: the best validation epoch's, or the last epoch's "
        "(when the validation targets cannot be trusted to pick, e.g. pseudo-labels)",
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="validate and keep an exponential moving average of the weights, updated "
        "every step with this decay (e.g. 0.99), instead of the raw weights (None = off)",
    )
    max_minutes: float | None = Field(None, gt=0, description="training time budget")
    budget_clock: Literal["wall", "process"] = Field(
        "wall",
        description="clock of max_minutes: wall time, or this process's CPU time (benchmarks on "
        "a machine shared with other jobs)",
    )
    bed_only: bool = Field(
        True,
        description="the model drops its predictions outside the powder bed (imaging.bed_box of "
        "the stored views: a machine frame or machinery around the bed is never a defect); kept "
        "in the model's spec, so every prediction path (evaluation, serving, scoring) does the same",
    )
    tile_size: int = Field(256, ge=32, description="inference tile side (px, multiple of 32)")
    tile_overlap: int = Field(32, ge=0, description="overlap between inference tiles (px)")
    flips: bool = Field(
        False,
        description="the model averages each prediction with those of the layer's left-right "
        "and up-down mirror images (its spec carries it to the threshold pick, evaluation, "
        "export and serving; 3x the inference)",
    )
    threshold_policy: Literal["max_dice", "target_recall"] = Field(
        "max_dice", description="how the decision threshold is picked on the validation layers"
    )
    target_recall: float = Field(0.95, gt=0, le=1, description="pixel recall for target_recall")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0 or self.split[0] <= 0:
            raise ValueError(
                f"split must be 3 non-negative fractions summing to 1, got {self.split}"
            )
        for name in ("patch_size", "tile_size"):
            if getattr(self, name) % 32:
                raise ValueError(f"{name} must be a multiple of 32, got {getattr(self, name)}")
        if self.tile_overlap >= self.tile_size // 2:
            raise ValueError(
                f"tile_overlap must be below half the tile ({self.tile_size}), got {self.tile_overlap}"
            )
        return self


class HeldOutConfig(Frozen):
    """A synthetic style family no training preset draws from, rendered fresh to score a model.

    The pipeline scores every candidate on it after training (logged to its MLflow run), so a
    model that only learned the look of its training build shows it.
    """

    style: SynthStyle = Field("foundry", description="style family of the held-out layers")
    layers: int = Field(8, ge=0, le=1000, description="layers rendered (0 = skip the check)")
    size: int = Field(512, ge=64, le=4096, description="layer side (px)")
    seed: int = Field(1000, description="another seed than any training build's")


class AdaptConfig(Frozen):
    """Adapting a model to a user's printer: fine-tuning on its unlabelled layers with
    pseudo-labels, then a gate (see :mod:`pbf_core.model.adaptation`).

    The rest of the fine-tune (patch size, batch, augmentation, device, threads) comes from the
    preset's ``train`` section.
    """

    epochs: int = Field(6, ge=1, le=200, description="fine-tuning epochs")
    steps_per_epoch: int = Field(20, ge=1, description="optimizer steps per epoch")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate (cosine decay from it)")
    max_minutes: float | None = Field(30, gt=0, description="fine-tuning time cap")
    confident: float = Field(
        0.9, gt=0, lt=1, description="a predicted component is confident when it peaks above this"
    )
    ring: int = Field(2, ge=0, le=16, description="px around pseudo-positives left out of the loss")
    flips: bool = Field(True, description="average the prediction over the layer's mirror images")
    min_gain: float = Field(
        0.0, ge=-1, le=1, description="Dice gain on the user's test layers the gate asks for"
    )
    guard_style: SynthStyle = Field(
        "mixed", description="synthetic family the adapted model must not forget"
    )
    guard_layers: int = Field(4, ge=0, le=100, description="guard layers rendered (0 = no guard)")
    guard_size: int = Field(512, ge=64, le=4096, description="guard layer side (px)")
    guard_seed: int = Field(1001, description="guard seed (not a training build's)")
    rehearsal_layers: int = Field(
        8,
        ge=0,
        le=200,
        description="fresh guard-style layers with their true masks mixed into the fine-tune, "
        "so the model does not forget what it knew (0 = none)",
    )
    rehearsal_seed: int = Field(1002, description="rehearsal seed (not a training build's)")
    max_source_drop: float = Field(
        0.05, ge=0, le=1, description="largest Dice loss on the guard layers the gate accepts"
    )
