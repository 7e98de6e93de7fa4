"""Validated configuration: frozen pydantic models, YAML presets, ``PBF_`` environment settings.

One module per stage (``data``, ``model``, ``deploy``) and ``pipeline`` (the whole run, the
environment's settings, :func:`load_config`); everything is importable from here. Nothing here
touches the disk or the environment at import time: call :func:`load_config` and
:class:`Settings` explicitly.
"""

from pbf_core.config.data import (
    AdaptiveLabelConfig,
    BackgroundLabelConfig,
    FilterConfig,
    LabelConfig,
    PrepareConfig,
    SynthConfig,
    SynthStyle,
    ThresholdLabelConfig,
)
from pbf_core.config.deploy import BenchmarkConfig, PromotionConfig, QuantizeConfig
from pbf_core.config.model import (
    AdaptConfig,
    AugmentConfig,
    HeldOutConfig,
    ModelConfig,
    TrainConfig,
)
from pbf_core.config.pipeline import (
    ConfigError,
    DataConfig,
    PipelineConfig,
    RunnerConfig,
    Settings,
    load_config,
)

__all__ = [
    "AdaptConfig",
    "AdaptiveLabelConfig",
    "AugmentConfig",
    "BackgroundLabelConfig",
    "BenchmarkConfig",
    "ConfigError",
    "DataConfig",
    "FilterConfig",
    "HeldOutConfig",
    "LabelConfig",
    "ModelConfig",
    "PipelineConfig",
    "PrepareConfig",
    "PromotionConfig",
    "QuantizeConfig",
    "RunnerConfig",
    "Settings",
    "SynthConfig",
    "SynthStyle",
    "ThresholdLabelConfig",
    "TrainConfig",
    "load_config",
]
