"""``pbf run`` / ``pbf serve-flow``: options, config loading, the printed summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import _load, app, print_summary

REPO = Path(__file__).resolve().parents[2]

SUMMARY = {
    "registry": "pbf-defect-segmenter",
    "versions": {"int8": "4", "fp32": "3"},
    "decision": {"alias": "challenger", "reason": "does not beat the champion: ..."},
    "champion_version": "2",
    "eval_layers": 6,
    "scores": {
        "truth": {
            "dice": 0.91,
            "recall": 0.95,
            "precision": 0.88,
            "instance_recall": 0.97,
            "false_positives_per_image": 0.5,
        }
    },
    "speedup": {"320": 4.2, "512": 4.5},
    "parity": {"passed": True, "dice": 0.996},
    "seconds": 412.0,
    "run_url": "http://127.0.0.1:5000/#/experiments/1/runs/abc",
}


def test_commands_extend_the_core_cli():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "prepare", "run", "serve-flow"):
        assert command in result.output


def test_overrides_apply_on_top_of_the_preset(tmp_path):
    cfg = _load(REPO / "configs" / "tiny.yaml", tmp_path, "cpu")
    assert cfg.data.raw == tmp_path and cfg.train.device == "cpu"
    assert cfg.train.epochs == 1  # from the preset


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_unknown_device_is_a_clean_error(device):
    result = CliRunner().invoke(
        app, ["run", "--config", str(REPO / "configs" / "tiny.yaml"), "--device", device]
    )
    assert result.exit_code == 2
    assert "train.device" in result.output


def test_summary_names_champion_scores_speedup_and_next_commands(capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    monkeypatch.setenv("PBF_STATE_DIR", "/s")
    print_summary(
        SUMMARY, "mlflow ui --backend-store-uri sqlite:///x.db --port 5000", Path("/s/prefect")
    )
    out = capsys.readouterr().out
    assert "champion: v2" in out and "challenger" in out
    assert "0.910" in out and "4.20x" in out and "passed" in out
    assert "mlflow ui --backend-store-uri sqlite:///x.db" in out
    assert "PREFECT_HOME=/s/prefect" in out and "prefect server start" in out
    assert "bentoml serve service:DefectService" in out and "BENTOML_HOME=/s/bentoml" in out


def test_summary_without_champion_and_with_servers(capsys, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect:4200/api")
    print_summary({**SUMMARY, "champion_version": None}, "", Path("/s"))
    out = capsys.readouterr().out
    assert "none yet" in out
    assert "open http://prefect:4200" in out and "open http://127.0.0.1:5000" in out
