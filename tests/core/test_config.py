"""Config: frozen, strict, YAML presets with errors that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pbf_core.config import ConfigError, PrepareConfig, Settings, SynthConfig, load_config


def test_defaults_are_valid_and_frozen():
    cfg = PrepareConfig()
    with pytest.raises(ValidationError):
        cfg.normalization = "minmax"  # type: ignore[misc]


def test_yaml_preset_and_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("labels:\n  method: threshold\n  threshold:\n    threshold: 0.3\n")
    cfg = load_config(path, PrepareConfig)
    assert cfg.labels.method == "threshold" and cfg.labels.threshold.threshold == 0.3
    assert load_config(None, SynthConfig, layers=3, seed=None).layers == 3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("labels:\n  method: magic\n", r"labels\.method"),
        ("unknown_key: 1\n", "unknown_key"),
        ("percentiles: [90, 10]\n", "percentiles"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("a: [unclosed\n", "not valid YAML"),
        ("max_pixels: -5\n", "max_pixels"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path, PrepareConfig)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", PrepareConfig)


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PBF_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PBF_REGISTRY_NAME", "other")
    s = Settings()
    assert s.state_dir == tmp_path and s.registry_name == "other"


def test_a_pipeline_preset_configures_each_step(tmp_path):
    from pbf_core.config import PipelineConfig, PrepareConfig, QuantizeConfig, TrainConfig

    preset = tmp_path / "pipeline.yaml"
    preset.write_text(
        "train: {epochs: 3, stratify: true}\nprepare: {normalization: minmax}\n"
        "quantize: {calibration_samples: 7}\nrunner: {kind: processes, workers: 2}\n"
    )
    assert load_config(preset, TrainConfig).epochs == 3
    assert load_config(preset, TrainConfig, epochs=5).stratify
    assert load_config(preset, PrepareConfig).normalization == "minmax"
    assert load_config(preset, QuantizeConfig).calibration_samples == 7
    assert load_config(preset, PipelineConfig).runner.kind == "processes"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        load_config(bad, TrainConfig)
    step_only = tmp_path / "train.yaml"
    step_only.write_text("epochs: 4\n")
    assert load_config(step_only, TrainConfig).epochs == 4
