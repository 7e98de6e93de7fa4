"""The whole pipeline's config, runtime settings from the environment, and loading YAML presets."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from pbf_core.config.base import Frozen
from pbf_core.config.data import PrepareConfig, SynthConfig
from pbf_core.config.deploy import BenchmarkConfig, PromotionConfig, QuantizeConfig
from pbf_core.config.model import AdaptConfig, HeldOutConfig, TrainConfig
from pbf_core.errors import PbfError


class DataConfig(Frozen):
    """Where the pipeline's raw layers come from: a path, or a synthetic build by default."""

    raw: Path | None = Field(
        None, description="raw dataset directory or .zip; None: generate the synthetic build"
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="dataset name, one MLflow experiment each; default: synthetic or raw's name",
    )
    synth: SynthConfig = SynthConfig()

    @property
    def dataset_name(self) -> str:
        if self.name:
            return self.name
        return "synthetic" if self.raw is None else (self.raw.stem or "dataset")


class RunnerConfig(Frozen):
    """Where a flow's per-layer work (preparation of each layer) runs: a Prefect task runner."""

    kind: Literal["threads", "processes"] = Field(
        "threads",
        description="threads: one process, layers in parallel threads (OpenCV and numpy release "
        "the GIL); processes: a pool of worker processes",
    )
    workers: int | None = Field(
        None, ge=1, le=256, description="layers prepared at once; None: one per CPU core"
    )


class PipelineConfig(Frozen):
    """Everything one ``train_pipeline`` run does, from raw layers to the registry's aliases."""

    data: DataConfig = DataConfig()
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    held_out: HeldOutConfig = HeldOutConfig()
    adapt: AdaptConfig = AdaptConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    promotion: PromotionConfig = PromotionConfig()
    runner: RunnerConfig = RunnerConfig()


class Settings(BaseSettings):
    """Runtime settings from ``PBF_*`` environment variables (never from code constants)."""

    model_config = SettingsConfigDict(env_prefix="PBF_", extra="ignore")

    state_dir: Path = Path(".pbf")
    tracking_uri: str | None = None
    registry_name: str = "pbf-defect-segmenter"
    results_db: str | None = None

    def results_url(self) -> str:
        """Where build scores are written (``PBF_RESULTS_DB``; default SQLite in the state dir)."""
        return self.results_db or f"sqlite:///{self.state_dir.resolve() / 'results.db'}"


class ConfigError(PbfError, ValueError):
    """A config file or value is invalid; the message names the file and each bad field."""


M = TypeVar("M", bound=BaseModel)


def _section(data: dict, model: type[BaseModel]) -> dict:
    """A step's part of a whole-pipeline preset (``configs/*.yaml``); other data as it is."""
    sections = {f.annotation: name for name, f in PipelineConfig.model_fields.items()}
    name = sections.get(model) if model is not PipelineConfig else None
    if name is None or not data or not set(data) <= set(PipelineConfig.model_fields):
        return data
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"section {name!r} must be a mapping, got {type(section).__name__}")
    return dict(section)


def load_config(path: str | Path | None, model: type[M], **overrides: object) -> M:
    """Load a YAML preset into ``model``, apply non-None ``overrides``, validate.

    A whole-pipeline preset (a :class:`PipelineConfig`, e.g. ``configs/default.yaml``) also
    configures one step: its section for ``model`` (``train`` for :class:`TrainConfig`, ...) is
    taken, so ``pbf run`` and the step commands can share one file.

    Raises:
        ConfigError: unreadable YAML, unknown keys or bad values, each field named.
    """
    data: dict = {}
    src = "<defaults>"
    if path is not None:
        src = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{src}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{src}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{src}: top level must be a mapping, got {type(loaded).__name__}")
        try:
            data = _section(loaded or {}, model)
        except ConfigError as exc:
            raise ConfigError(f"{src}: {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{src}: invalid {model.__name__}: {problems}") from None
