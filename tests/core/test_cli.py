"""The pbf command line, run as a real subprocess (the installed console script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PBF = shutil.which("pbf", path=str(Path(sys.executable).parent)) or "pbf"


def pbf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PBF, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands():
    out = pbf("--help")
    assert out.returncode == 0
    for command in ("synth", "prepare"):
        assert command in out.stdout


def test_synth_then_prepare(tmp_path):
    raw, prep = tmp_path / "raw", tmp_path / "prep"
    out = pbf("synth", str(raw), "--layers", "8", "--size", "64", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert (raw / "images" / "B0001a.PNG").is_file()
    out = pbf("prepare", str(raw), str(prep), "--method", "threshold", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert report["label_method"] == "threshold"
    assert report["counts"]["kept"] == 8
    assert json.loads((prep / "report.json").read_text())["counts"] == report["counts"]


def test_prepare_prints_tables(tmp_path):
    raw = tmp_path / "raw"
    assert pbf("synth", str(raw), "--layers", "8", "--size", "64").returncode == 0
    out = pbf("prepare", str(raw), str(tmp_path / "prep"))
    assert out.returncode == 0, out.stderr
    assert "weak label quality" in out.stdout and "dropped frames" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prepare", "/nonexistent/raw", "OUT"], "not found"),
        (["synth", "OUT", "--layers", "0"], "layers"),
        (["prepare", "RAW", "OUT", "--method", "magic"], "method"),
        (["synth", "OUT", "--style", "glossy"], "style"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    args = [a.replace("OUT", str(tmp_path / "o")).replace("RAW", str(tmp_path)) for a in args]
    out = pbf(*args)
    assert out.returncode == 2
    assert "error:" in out.stderr and message in out.stderr
    assert "Traceback" not in out.stderr


def test_synth_style_draws_a_look_per_layer(tmp_path):
    out = pbf("synth", str(tmp_path / "raw"), "--layers", "3", "--size", "64", "--style", "dim")
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["config"]["style"] == "dim"
    assert all("look" in layer for layer in manifest["layers"] if layer["kind"] == "layer")
