"""``pbf run`` / ``pbf serve-flow``: options, config loading, the printed summary."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.pipeline import load_pipeline_config, print_summary
from pbf_core.data.dataset import PreparedDataset
from pbf_core.data.split import Split
from pbf_core.deploy.parity import Parity
from pbf_core.evaluation.held_out import HeldOutScores
from pbf_core.evaluation.promotion import Decision
from pbf_core.evaluation.scores import Evaluation, LabelScores
from pbf_core.summary import RegisteredVersions, RunSummary, TrackingRun, summary_markdown

REPO = Path(__file__).resolve().parents[2]


def _scores(dice: float) -> LabelScores:
    pixel = {"dice": dice, "iou": 0.8, "precision": 0.88, "recall": 0.95}
    instance = {"instance_recall": 0.97, "false_positives_per_image": 0.5}
    return LabelScores(6, 0.4, pixel, pixel, instance, 0.9, 0.92, 0.4, 0.3)


HELD_OUT = {"dice": 0.612, "precision": 0.55, "recall": 0.7, "instance_recall": 0.8}
HELD_OUT["false_components"] = 3.25
SPLIT = Split(("a", "b"), ("c",), tuple(f"t{i}" for i in range(6)), "truth", 0, True, "e" * 64)
SUMMARY = RunSummary(
    dataset=PreparedDataset("synthetic", Path("/d"), "d" * 64, ("a", "b", "c"), 40, split=SPLIT),
    run=TrackingRun("abc", "1", "http://127.0.0.1:5000/#/experiments/1/runs/abc"),
    registry="pbf-defect-segmenter",
    versions=RegisteredVersions(int8="4", fp32="3"),
    decision=Decision(False, "does not beat the champion: ...", "truth/dice", 0.91, 0.93),
    champion_version="2",
    bento_model=None,
    evaluation=Evaluation(0.4, 6, _scores(0.91), _scores(0.85)),
    held_out=HeldOutScores("foundry", 8, 512, 1000, 0.4, HELD_OUT),
    training={"seconds": 300.0, "device": "cpu", "precision": "bfloat16", "stopped": "time_budget"},
    speedup={"320": 4.2, "512": 4.5},
    parity=Parity("onnx-int8", "truth", 6, 0.996, 0.99, 0.997, 0.99, 0.99, 0.98, 0.01, 0.01, True),
    seconds=412.0,
)


def test_commands_extend_the_core_cli():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "prepare", "run", "serve-flow"):
        assert command in result.output


def test_overrides_apply_on_top_of_the_preset(tmp_path):
    cfg = load_pipeline_config(REPO / "configs" / "tiny.yaml", tmp_path, "cpu")
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
    assert "0.910" in out and "4.20x" in out and "gate passed" in out
    assert "mlflow ui --backend-store-uri sqlite:///x.db" in out
    assert "PREFECT_HOME=/s/prefect" in out and "prefect server start" in out
    assert "bentoml serve service:DefectService" in out and "BENTOML_HOME=/s/bentoml" in out


def test_summary_without_champion_and_with_servers(capsys, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect:4200/api")
    print_summary(replace(SUMMARY, champion_version=None), "", Path("/s"))
    out = capsys.readouterr().out
    assert "none yet" in out
    assert "open http://prefect:4200" in out and "open http://127.0.0.1:5000" in out


def test_summary_markdown_is_the_one_formatting():
    text = summary_markdown(SUMMARY)
    assert "**Promotion:** challenger — does not beat the champion" in text
    assert "int8 v4, fp32 v3; champion: v2" in text
    assert "(6 test layers)" in text and "300 s on cpu (bfloat16), stopped: time_budget" in text
    assert "| true masks | 0.910 |" in text and "| weak labels | 0.850 |" in text
    assert "Dice 0.9960 against the truth masks (fp32 0.9970, loss +0.0010" in text
    assert "held-out `foundry` style" in text and "Dice 0.612" in text
    assert "3.25 false components / layer" in text
    assert "foundry" not in summary_markdown(replace(SUMMARY, held_out=None))
    assert "Environment" not in text  # a summary from before the fit recorded it
    env = {"torch": "2.14.1+cpu", "albumentations": "2.0.8"}
    pinned = summary_markdown(replace(SUMMARY, training={**SUMMARY.training, "environment": env}))
    assert "- **Environment:** torch 2.14.1+cpu, albumentations 2.0.8" in pinned


def test_serve_flow_refuses_without_a_prefect_server(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(
        app, ["serve-flow", "--config", str(REPO / "configs" / "tiny.yaml")]
    )
    assert result.exit_code == 2
    assert "PREFECT_API_URL" in result.output


def test_every_command_is_in_pbf_help_and_the_modules_help():
    from flows.cli import COMMANDS

    main = CliRunner().invoke(app, ["--help"])
    module = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, check=True
    )
    for name in COMMANDS:
        assert name in main.output and name in module.stdout
    assert "prototype" not in main.output.lower()
