"""`pbf train`, `pbf evaluate` and `pbf predict`, run as the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PBF = shutil.which("pbf", path=str(Path(sys.executable).parent)) or "pbf"

TINY_YAML = """
epochs: 1
steps_per_epoch: 2
batch_size: 2
patch_size: 32
tile_size: 64
tile_overlap: 16
threads: 1
model:
  decoder_channels: [16, 16, 8, 8, 8]
"""


def pbf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PBF, *args], capture_output=True, text=True, timeout=600)


def stdout_json(out: subprocess.CompletedProcess) -> dict:
    return json.loads(out.stdout[out.stdout.index("{") : out.stdout.rindex("}") + 1])


@pytest.fixture(scope="module")
def trained(prepared_synthetic, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    (run / "tiny.yaml").write_text(TINY_YAML)
    out = pbf(
        "train", str(prepared_synthetic), "--out", str(run), "--device", "cpu",
        "--labels", "truth", "--config", str(run / "tiny.yaml"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "against true masks" in out.stdout
    return run


@pytest.mark.slow
def test_train_writes_checkpoint_and_reports(trained):
    for name in ("model.safetensors", "metrics.json", "history.json", "split.json"):
        assert (trained / name).is_file(), name


@pytest.mark.slow
def test_evaluate_prints_json(trained, prepared_synthetic):
    out = pbf(
        "evaluate", str(trained / "model.safetensors"), str(prepared_synthetic),
        "--split", str(trained / "split.json"), "--part", "test",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = stdout_json(out)
    test_ids = json.loads((trained / "split.json").read_text())["test"]
    assert result["layers"] == len(test_ids)
    assert {"pixel", "instance", "average_precision"} <= set(result["truth"])


@pytest.mark.slow
def test_predict_writes_mask_and_overlay(trained, prepared_synthetic, tmp_path):
    images = sorted((prepared_synthetic / "images").glob("*.png"))[:2]
    out = pbf(
        "predict", str(trained / "model.safetensors"), *map(str, images), "--out", str(tmp_path)
    )
    assert out.returncode == 0, out.stderr
    report = stdout_json(out)
    assert set(report) == {p.stem for p in images}
    for p in images:
        assert (tmp_path / f"{p.stem}_mask.png").is_file()
        assert (tmp_path / f"{p.stem}_overlay.png").is_file()


@pytest.mark.slow
def test_predict_groups_raw_triplets(trained, synthetic_build, tmp_path):
    triplet = sorted((synthetic_build / "images").glob("B0001?.PNG"))
    assert len(triplet) == 3
    out = pbf(
        "predict", str(trained / "model.safetensors"), *map(str, triplet), "--out", str(tmp_path)
    )
    assert out.returncode == 0, out.stderr
    assert list(stdout_json(out)) == ["B0001"]
    assert (tmp_path / "B0001_overlay.png").is_file()


def test_predict_keeps_a_bed_only_model_to_the_powder_bed(tmp_path):
    """A model that marks every pixel marks nothing on the machine frame of raw views."""
    import cv2
    import torch

    from pbf_core.config import SynthConfig
    from pbf_core.data.imaging import bed_mask, read_mask
    from pbf_core.data.synthetic import render_layer
    from pbf_core.model.checkpoints import save_checkpoint
    from pbf_core.model.factory import model_from_spec
    from pbf_core.model.spec import ModelSpec

    spec = ModelSpec(decoder_channels=(16, 16, 8, 8, 8), head_width=8, tile_size=128,
                     tile_overlap=16, threshold=1e-6, bed_only=True, normalization="bed")  # fmt: skip
    torch.manual_seed(0)
    model = save_checkpoint(tmp_path / "model.safetensors", model_from_spec(spec), spec)
    views = render_layer(SynthConfig(layers=1, size=256, seed=2, style="am04"), 0).views
    for name, view in zip("abc", views, strict=True):
        assert cv2.imwrite(str(tmp_path / f"L1{name}.png"), view)  # 16-bit, as a camera stores
    files = [str(tmp_path / f"L1{v}.png") for v in "abc"]
    out = pbf("predict", str(model), *files, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    mask = read_mask(tmp_path / "out" / "L1_mask.png")
    bed = bed_mask(views)
    assert not bed.all() and mask[bed].all() and not mask[~bed].any()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{missing}", "--out", "{tmp}"], "manifest"),
        (["train", "{missing}", "--out", "{tmp}", "--device", "tpu"], "device"),
        (["evaluate", "{missing}/model.safetensors", "{tmp}"], "manifest"),
        (["predict", "{tmp}/none.safetensors", "x.png", "--out", "{tmp}"], "not found"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    fill = {"missing": str(tmp_path / "missing"), "tmp": str(tmp_path)}
    out = pbf(*(a.format(**fill) for a in args))
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


ADAPT_PRESET = """
train: {device: cpu, epochs: 1, steps_per_epoch: 2, batch_size: 2, patch_size: 32, tile_size: 64,
        tile_overlap: 16, threads: 1, model: {decoder_channels: [16, 16, 8, 8, 8]}}
adapt: {epochs: 1, steps_per_epoch: 2, guard_layers: 1, guard_size: 64, rehearsal_layers: 1}
"""


@pytest.mark.slow
def test_adapt_prepares_raw_layers_and_reports_its_verdict(trained, synthetic_build, tmp_path):
    (tmp_path / "preset.yaml").write_text(ADAPT_PRESET)
    out = pbf(
        "adapt", str(synthetic_build), "--model", str(trained / "model.safetensors"),
        "--out", str(tmp_path / "adapted"), "--config", str(tmp_path / "preset.yaml"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "adapted" / "adaptation.json").read_text())
    verdict = "accepted" if report["accepted"] else "rejected: keep using the source model"
    assert f"{verdict}: {report['reason']}" in " ".join(out.stdout.split())
    assert (tmp_path / "adapted" / "data" / "manifest.json").is_file()  # raw layers prepared
    assert (tmp_path / "adapted" / "model.safetensors").is_file()


def test_adapt_names_a_missing_model(prepared_synthetic, tmp_path):
    out = pbf("adapt", str(prepared_synthetic), "--model", str(tmp_path / "nope.safetensors"),
              "--out", str(tmp_path / "o"))  # fmt: skip
    assert out.returncode == 2 and "nope.safetensors" in out.stderr and "not found" in out.stderr
