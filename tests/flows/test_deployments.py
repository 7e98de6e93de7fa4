"""``prefect.yaml`` is valid for this Prefect and points at the real flow; config presets load."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from pbf_core.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def test_prefect_yaml_validates_against_prefects_model(prefect_yaml):
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(prefect_yaml)
    names = [(d.name, d.entrypoint.split(":")[1]) for d in model.deployments]
    assert sorted(names) == sorted([("nightly", "train_pipeline"), ("on-demand", "train_pipeline"),
        ("adapt", "adapt_model"), ("on-demand", "score_build"), ("watch", "score_build")])  # fmt: skip


def test_deployments_use_the_process_pool_and_the_real_flow(prefect_yaml):
    for dep in prefect_yaml["deployments"]:
        assert dep["work_pool"]["name"] == "pbf-process"
        module, func = dep["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        expected = {"train_pipeline": "train-pipeline", "adapt_model": "adapt-model",
                    "score_build": "score-build"}[func]  # fmt: skip
        assert flow.name == expected
        if func != "score_build":
            PipelineConfig.model_validate(dep["parameters"].get("config", {}))


def test_adapt_flow_asks_for_the_printers_layers():
    from prefect.utilities.callables import parameter_schema

    from flows.adaptation import adapt_model

    schema = parameter_schema(adapt_model)
    assert schema.required == ["raw"]
    assert set(schema.properties) == {"raw", "model_path", "config"}


def test_nightly_has_a_valid_cron_schedule(prefect_yaml):
    from prefect.client.schemas.schedules import CronSchedule

    (nightly,) = [d for d in prefect_yaml["deployments"] if d["name"] == "nightly"]
    (schedule,) = nightly["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    on_demand = next(d for d in prefect_yaml["deployments"] if d["name"] == "on-demand")
    assert on_demand["schedules"] == []
    (watch,) = [d for d in prefect_yaml["deployments"] if d["name"] == "watch"]
    assert watch["schedules"][0]["interval"] <= 300 and watch["parameters"]["build"]


def test_flow_parameter_schema_is_the_pipeline_config():
    """Prefect renders the one pydantic parameter as a form: its schema must be generated."""
    from prefect.utilities.callables import parameter_schema

    from flows.training import train_pipeline

    schema = parameter_schema(train_pipeline.fn)
    assert list(schema.properties) == ["config"]
    assert "PipelineConfig" in schema.definitions


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_load(preset):
    cfg = load_config(preset, PipelineConfig)
    assert cfg.data.raw is None  # presets run offline on a synthetic build


@pytest.mark.parametrize(
    "preset", sorted((REPO / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name
)
def test_training_presets_load(preset):
    from pbf_core.config import TrainConfig

    cfg = load_config(preset, TrainConfig)
    assert cfg.epochs >= 1


def test_bad_preset_names_the_field(tmp_path):
    from pbf_core.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 0\npromotion:\n  metric: accuracy\n")
    with pytest.raises(
        ConfigError, match=r"train\.epochs.*promotion\.metric|promotion\.metric.*train\.epochs"
    ):
        load_config(bad, PipelineConfig)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        ({}, "synthetic"),
        ({"raw": "/data/am04"}, "am04"),
        ({"raw": "/data/kaggle.zip"}, "kaggle"),
        ({"raw": "/data/am04", "name": "am04-v2"}, "am04-v2"),
    ],
)
def test_one_experiment_per_dataset_name(data, name):
    from pbf_core.config import DataConfig

    assert DataConfig.model_validate(data).dataset_name == name


def test_dataset_name_must_be_a_safe_identifier():
    from pbf_core.config import DataConfig

    with pytest.raises(ValueError, match="name"):
        DataConfig(name="../etc")


def test_score_build_flow_asks_for_the_build():
    from prefect.utilities.callables import parameter_schema

    from flows.scoring import score_build

    schema = parameter_schema(score_build)
    assert schema.required == ["build"]
    assert {"model", "out", "runner", "dask_address", "workers", "min_area"} <= set(
        schema.properties
    )
