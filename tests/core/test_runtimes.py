"""CPU runtimes for exported models: OpenVINO beside ONNX Runtime on the same ONNX files."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_export import tiny_unet

import pbf_core.deploy.runtimes as runtimes
from pbf_core.config import QuantizeConfig
from pbf_core.deploy.export import export_onnx
from pbf_core.deploy.inference import onnx_predictor
from pbf_core.deploy.quantization import quantize_static
from pbf_core.deploy.runtimes import (
    OpenVINOPredictor,
    open_predictor,
    open_session,
    resolve_runtime,
)
from pbf_core.errors import ExportError

TILE = 32
needs_openvino = pytest.mark.skipif(
    not runtimes.openvino_available(), reason="openvino not installed"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """fp32 and static int8 ONNX files of a tiny U-Net."""
    work = tmp_path_factory.mktemp("runtimes")
    fp32 = work / "fp32.onnx"
    export_onnx(tiny_unet(), fp32, in_channels=3)
    calib = np.random.default_rng(0).random((8, 3, TILE, TILE), dtype=np.float32)
    int8 = quantize_static(fp32, work / "int8.onnx", calib, QuantizeConfig())
    return {"fp32": fp32, "int8": int8}


def tiles(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, TILE, TILE), dtype=np.float32)


def test_resolve_runtime(monkeypatch):
    assert resolve_runtime("onnxruntime") == "onnxruntime"
    monkeypatch.setattr(runtimes, "openvino_available", lambda: False)
    assert resolve_runtime("auto") == "onnxruntime"
    with pytest.raises(ValueError, match="openvino package is not installed"):
        resolve_runtime("openvino")
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        resolve_runtime("tensorrt")  # type: ignore[arg-type]
    monkeypatch.setattr(runtimes, "openvino_available", lambda: True)
    assert resolve_runtime("auto") == "openvino"


@needs_openvino
@pytest.mark.parametrize(("variant", "atol"), [("fp32", 1e-5), ("int8", 0.05)])
def test_openvino_matches_onnxruntime(models, variant, atol):
    """Same file, same probabilities (float parts stay float32 under OpenVINO)."""
    ov = OpenVINOPredictor(models[variant], chunk=3)
    ort = onnx_predictor(open_session(models[variant], 1))
    x = tiles(7)  # chunks of 3, 3 and 1
    a, b = ov(x), ort(x)
    assert a.shape == b.shape == (7, TILE, TILE) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=atol)
    assert np.abs(a - b).mean() < atol / 5


@needs_openvino
def test_openvino_predictor_is_thread_safe(models):
    ov = OpenVINOPredictor(models["int8"], chunk=2, warm_tile=TILE, streams=2)
    inputs = [tiles(3, seed) for seed in range(6)]
    expected = [ov(x) for x in inputs]
    got: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        for _ in range(5):
            got[i] = ov(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == list(range(6))
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(got[i], want)


@needs_openvino
def test_open_predictor_checks_openvino_against_onnxruntime(models, monkeypatch):
    predict, runtime = open_predictor(models["int8"], "auto", 1, warm_tile=TILE)
    assert runtime == "openvino" and isinstance(predict, OpenVINOPredictor)
    monkeypatch.setattr(runtimes, "runtime_difference", lambda *a, **k: 0.5)
    predict, runtime = open_predictor(models["int8"], "auto", 1, warm_tile=TILE)
    assert runtime == "onnxruntime"  # fell back, with a warning
    assert predict(tiles(1)).shape == (1, TILE, TILE)
    with pytest.raises(ExportError, match=r"differ from ONNX Runtime's by 0\.5"):
        open_predictor(models["int8"], "openvino", 1, warm_tile=TILE)


def test_open_predictor_refuses_a_missing_file(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        open_predictor(tmp_path / "none.onnx", "onnxruntime")
    if runtimes.openvino_available():
        with pytest.raises(ExportError, match="not found"):
            OpenVINOPredictor(tmp_path / "none.onnx")


@needs_openvino
def test_open_predictor_falls_back_when_openvino_fails(models, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no CPU plugin")

    monkeypatch.setattr(runtimes, "OpenVINOPredictor", broken)
    predict, runtime = open_predictor(models["int8"], "auto", 1, warm_tile=TILE)
    assert runtime == "onnxruntime" and predict(tiles(2)).shape == (2, TILE, TILE)
    with pytest.raises(RuntimeError, match="no CPU plugin"):
        open_predictor(models["int8"], "openvino", 1, warm_tile=TILE)


@needs_openvino
def test_open_predictor_checks_a_single_view_model(tmp_path):
    """The load-time check feeds tiles with the model's own channel count."""
    import torch

    torch.manual_seed(0)
    path = tmp_path / "grey.onnx"
    export_onnx(torch.nn.Conv2d(1, 1, 3, padding=1).eval(), path, in_channels=1)
    predict, runtime = open_predictor(path, "openvino", 1, warm_tile=TILE)
    assert runtime == "openvino" and predict.channels == 1
    assert predict(np.zeros((2, 1, TILE, TILE), np.float32)).shape == (2, TILE, TILE)
