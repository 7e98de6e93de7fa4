"""Configs of deployment: static int8 quantization and its parity gate, the benchmark, promotion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pbf_core.config.base import Frozen


class QuantizeConfig(Frozen):
    """Static int8 quantization (ONNX Runtime, QDQ) and the parity gate of every variant."""

    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="how activation ranges are set from the calibration tiles"
    )
    percentile: float = Field(
        99.999, gt=90, le=100, description="kept range of each activation (percentile method)"
    )
    calibration_samples: int = Field(
        64, ge=1, le=10_000, description="calibration tiles drawn from training images"
    )
    calibration_tile: int | None = Field(
        None, ge=32, le=4096, description="calibration tile side (px); None: the model's tile"
    )
    calibration_batch: int = Field(8, ge=1, le=256, description="tiles per calibration batch")
    defect_tile_fraction: float = Field(
        0.5, ge=0, le=1, description="fraction of tiles centred on a labelled pixel"
    )
    per_channel: bool = Field(True, description="one weight scale per output channel")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="activation type (weights are int8): U8S8 or S8S8"
    )
    reduce_range: bool = Field(
        True,
        description="7-bit weights, so U8S8 products never saturate on CPUs without VNNI (AVX2, "
        "older AVX-512), which may be where the file is served; costs next to no accuracy",
    )
    float_max_channels: int = Field(
        8,
        ge=0,
        le=4096,
        description="convolutions with at most this many output channels stay in float (ONNX "
        "Runtime's int8 kernels are slow there); 0 quantizes every convolution",
    )
    match_threshold: bool = Field(
        True,
        description="give the int8 file its own threshold, picked on validation layers so its "
        "masks agree best with the fp32 model's",
    )
    dice_tolerance: float = Field(
        0.01, ge=0, le=1, description="largest Dice loss against the fp32 model's masks"
    )
    recall_tolerance: float = Field(
        0.01, ge=0, le=1, description="largest recall loss against the fp32 model's masks"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check_tile(self) -> QuantizeConfig:
        if self.calibration_tile is not None and self.calibration_tile % 32:
            raise ValueError(
                f"calibration_tile must be a multiple of 32, got {self.calibration_tile}"
            )
        return self


class BenchmarkConfig(Frozen):
    """Inference benchmark: input sides, batch sizes, repetitions, threads."""

    sizes: tuple[int, ...] = Field(
        (320, 512), description="square input sides (px, multiples of 32)"
    )
    batch: int = Field(1, ge=1, le=256, description="batch of the latency runs")
    throughput_batch: int = Field(8, ge=1, le=256, description="batch of the throughput runs")
    warmup: int = Field(3, ge=0, le=1000, description="untimed runs before timing")
    iterations: int = Field(30, ge=1, le=100_000, description="timed latency runs")
    throughput_iterations: int = Field(5, ge=1, le=10_000, description="timed throughput runs")
    threads: int | None = Field(
        None, ge=1, le=1024, description="intra-op threads; None: all cores"
    )
    rounds: int = Field(
        1, ge=1, le=20, description="measure all variants this many times in rotation, keep best"
    )
    timeout_s: float = Field(1800, gt=0, description="limit per variant and round (s)")

    @model_validator(mode="after")
    def _check_sizes(self) -> BenchmarkConfig:
        bad = [s for s in self.sizes if s < 32 or s % 32]
        if bad or not self.sizes:
            raise ValueError(f"sizes must be non-empty multiples of 32, got {self.sizes}")
        return self


class PromotionConfig(Frozen):
    """When a candidate becomes ``champion``: it beats the champion on the same evaluation set."""

    metric: Literal[
        "dice",
        "iou",
        "recall",
        "precision",
        "instance_recall",
        "false_positives_per_image",
        "average_precision",
    ] = Field("dice", description="score compared on the frozen evaluation (test) layers")
    labels: Literal["auto", "truth", "weak"] = Field(
        "auto", description="reference masks: auto = true masks when the layers have them"
    )
    margin: float = Field(
        0.0, ge=0, le=1, description="the candidate must be better than the champion by more"
    )
    require_parity: bool = Field(True, description="the int8 variant must pass its parity gate")
    floor: float | None = Field(
        None,
        description="absolute bar on the metric (a ceiling for false_positives_per_image): a "
        "candidate that misses it is never promoted, not even the first one",
    )
