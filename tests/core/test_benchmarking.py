"""Inference benchmark: timing statistics, one worker per variant, parity, JSON + markdown."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from pbf_core.bench.report import (
    BenchmarkReport,
    Latency,
    VariantResult,
    format_markdown,
    write_report,
)
from pbf_core.bench.runner import BenchmarkError, EvalSet, Variant, benchmark
from pbf_core.bench.worker import measure_latency
from pbf_core.config import BenchmarkConfig, QuantizeConfig
from pbf_core.deploy.export import INPUT_NAME, OUTPUT_NAME
from pbf_core.deploy.metadata import set_metadata, spec_metadata
from pbf_core.deploy.quantization import quantize_static, sample_calibration_tiles
from pbf_core.model.spec import ModelSpec

SMALL = (16, 16, 8, 8, 8)
SPEC = ModelSpec(tile_size=64, tile_overlap=8, threshold=0.5, decoder_channels=SMALL)
FAST = BenchmarkConfig(
    sizes=(32, 64), iterations=3, warmup=1, throughput_batch=2, throughput_iterations=2
)


def conv_graph() -> onnx.ModelProto:
    """One 3x3 convolution from 3 channels to a logit, dynamic batch and size."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (1, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([-0.7], np.float32), "b")
    node = helper.make_node("Conv", [INPUT_NAME, "w", "b"], [OUTPUT_NAME], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


@pytest.fixture(scope="module")
def onnx_variants(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    model = conv_graph()
    set_metadata(model, spec_metadata(SPEC, "onnx-fp32"))
    fp32 = root / "model.fp32.onnx"
    onnx.save_model(model, str(fp32))
    rng = np.random.default_rng(0)
    imgs = [rng.random((3, 96, 96), dtype=np.float32) for _ in range(2)]
    cfg = QuantizeConfig(calibration_samples=4)
    int8 = quantize_static(fp32, root / "model.int8.onnx", sample_calibration_tiles(imgs, 64, cfg))
    return [Variant("onnx-fp32", "onnx", fp32), Variant("onnx-int8", "onnx", int8)]


# --- timing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("warmup", "iterations"), [(0, 1), (2, 5), (1, 20)])
def test_measure_latency_counts_and_orders(warmup, iterations):
    calls = []
    lat = measure_latency(lambda: calls.append(1), warmup, iterations)
    assert len(calls) == warmup + iterations and lat.iterations == iterations
    assert 0 <= lat.min_ms <= lat.p50_ms <= lat.p95_ms
    assert lat.min_ms <= lat.mean_ms


@pytest.mark.parametrize(
    "bad",
    [{"sizes": (100,)}, {"sizes": ()}, {"iterations": 0}, {"threads": 0}, {"rounds": 0}, {"x": 1}],
)
def test_benchmark_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        BenchmarkConfig(**bad)


# --- the benchmark run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_report(onnx_variants, prepared_synthetic):
    from pbf_core.data.dataset import load_manifest

    ids = tuple(e.id for e in load_manifest(prepared_synthetic).layers[:3])
    cfg = FAST.model_copy(update={"threads": 1})
    return benchmark(onnx_variants, cfg, EvalSet(prepared_synthetic, ids), reference="onnx-fp32")


def test_benchmark_measures_every_variant(onnx_report, onnx_variants):
    assert [r.name for r in onnx_report.variants] == [v.name for v in onnx_variants]
    for res in onnx_report.variants:
        assert set(res.latency) == set(res.throughput) == {"32", "64"}
        assert all(lat.p50_ms > 0 and lat.iterations == 3 for lat in res.latency.values())
        assert all(t > 0 for t in res.throughput.values())
        assert res.threads == 1 and res.size_mb > 0
        assert res.peak_rss_mb >= res.rss_before_mb > 0
    fp32, _ = onnx_report.variants
    assert onnx_report.speedups(fp32) == {"32": 1.0, "64": 1.0}
    assert onnx_report.config["threads"] == 1
    assert onnx_report.machine["cores"] >= 1 and "loadavg_after" in onnx_report.machine


def test_benchmark_gates_parity_against_the_reference(onnx_report):
    fp32, int8 = onnx_report.variants
    assert fp32.parity["agreement_dice"] == 1.0 and fp32.parity["passed"]
    assert fp32.parity["images"] == 3 and fp32.parity["labels"] in ("truth", "weak")
    assert fp32.parity["dice_loss"] == 0.0
    assert int8.parity["reference_dice"] == fp32.parity["dice"]
    assert 0 <= int8.parity["agreement_dice"] <= 1 and int8.parity["dice_tolerance"] == 0.01
    assert int8.parity["passed"] == (not int8.parity["reason"])


def test_report_files(onnx_report, tmp_path):
    path = write_report(onnx_report, tmp_path / "results")
    data = json.loads(path.read_text())
    assert [v["name"] for v in data["variants"]] == ["onnx-fp32", "onnx-int8"]
    assert data["variants"][1]["speedup"].keys() == {"32", "64"}
    assert "model_memory_mb" in data["variants"][0]
    md = (tmp_path / "results" / "inference.md").read_text()
    assert "| onnx-int8 |" in md and "threads: 1" in md and "cores" in md


def test_benchmark_rejects_missing_files_and_reference(tmp_path, onnx_variants):
    with pytest.raises(BenchmarkError, match="file not found"):
        benchmark([Variant("onnx-fp32", "onnx", tmp_path / "nope.onnx")], FAST)
    with pytest.raises(BenchmarkError, match="parity reference"):
        benchmark(onnx_variants, FAST, EvalSet(tmp_path, ("x",)))


def test_benchmark_reports_a_failing_worker(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BenchmarkError, match="onnx-fp32: worker failed"):
        benchmark([Variant("onnx-fp32", "onnx", bad)], FAST)


def test_markdown_marks_failed_parity():
    lat = {"320": Latency(10.0, 12.0, 9.0, 10.5, 5)}
    res = [
        VariantResult("torch-fp32", "torch", "m", 16.8, 2, lat, {"320": 50.0}, 300, 500),
        VariantResult(
            "onnx-int8",
            "onnx",
            "q",
            4.5,
            2,
            {"320": Latency(2.0, 3.0, 1.5, 2.2, 5)},
            {"320": 400.0},
            50,
            120,
        ),
    ]
    base = {"labels": "truth", "images": 4, "dice_tolerance": 0.01, "recall_tolerance": 0.01}
    res[0].parity = {
        **base,
        "dice": 0.9,
        "recall": 0.9,
        "dice_loss": 0.0,
        "recall_loss": 0.0,
        "agreement_dice": 1.0,
        "agreement_recall": 1.0,
        "passed": True,
        "reason": "",
    }
    res[1].parity = {
        **base,
        "dice": 0.85,
        "recall": 0.9,
        "dice_loss": 0.05,
        "recall_loss": 0.0,
        "agreement_dice": 0.95,
        "agreement_recall": 0.97,
        "passed": False,
        "reason": "Dice 0.8500 vs fp32 0.9000: loses 0.0500 > 0.01",
    }
    report = BenchmarkReport(
        machine={"cpu": "cpu", "cores": 2, "os": "x", "versions": {}, "loadavg": [1, 1, 1]},
        config={**BenchmarkConfig(sizes=(320,)).model_dump(), "threads": 2},
        reference="torch-fp32",
        variants=res,
    )
    md = format_markdown(report)
    assert "5.00x" in md and "FAIL: Dice 0.8500 vs fp32" in md and "| torch-fp32 | 16.8 |" in md
    assert "+0.0500 / +0.0000" in md and "truth masks of 4 held-out layers" in md
    assert report.to_dict()["variants"][1]["model_memory_mb"] == 70.0


@pytest.mark.slow
def test_benchmark_runs_torch_and_onnx_variants(tmp_path, prepared_synthetic):
    import torch

    from pbf_core.deploy.export import export_model
    from pbf_core.model.checkpoints import save_checkpoint
    from pbf_core.model.factory import create_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", create_model(decoder_channels=SMALL), SPEC)
    export_model(ckpt, tmp_path / "m.onnx")
    variants = [
        Variant("torch-fp32", "torch", ckpt),
        Variant("torch-dynamic-int8", "torch", ckpt, dynamic_int8=True),
        Variant("onnx-fp32", "onnx", tmp_path / "m.onnx"),
    ]
    from pbf_core.data.dataset import load_manifest

    ids = (load_manifest(prepared_synthetic).layers[0].id,)
    report = benchmark(
        variants, FAST.model_copy(update={"rounds": 2}), EvalSet(prepared_synthetic, ids)
    )
    torch_fp32, dynamic, onnx_fp32 = report.variants
    assert torch_fp32.parity["passed"] and dynamic.parity["agreement_dice"] == 1.0
    assert onnx_fp32.parity["agreement_dice"] > 0.99
    assert dynamic.size_mb == torch_fp32.size_mb


@pytest.mark.slow
def test_benchmark_model_quantizes_when_needed_and_writes_the_report(tmp_path, prepared_synthetic):
    import torch

    from pbf_core.bench.runner import benchmark_model, onnx_files
    from pbf_core.config import TrainConfig
    from pbf_core.data.dataset import open_dataset
    from pbf_core.data.split import split_dataset
    from pbf_core.model.checkpoints import save_checkpoint
    from pbf_core.model.factory import create_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", create_model(decoder_channels=SMALL), SPEC)
    dataset = split_dataset(open_dataset(prepared_synthetic), TrainConfig())
    dataset.split.save(tmp_path / "split.json")  # as `pbf train` leaves it beside the model
    onnx_dir = tmp_path / "out" / "onnx"
    with pytest.raises(BenchmarkError, match="pass the training data"):
        onnx_files(ckpt, onnx_dir)
    cfg = BenchmarkConfig(
        sizes=(64,), iterations=2, warmup=0, throughput_batch=2, throughput_iterations=1
    )
    qcfg = QuantizeConfig(calibration_samples=2)
    fp32, int8 = onnx_files(ckpt, onnx_dir, open_dataset(prepared_synthetic), qcfg)
    report = benchmark_model(
        ckpt, fp32, int8, tmp_path / "out", cfg, dataset=dataset, quantize_cfg=qcfg
    )
    assert [v.name for v in report.variants] == [
        "torch-fp32",
        "torch-dynamic-int8",
        "onnx-fp32",
        "onnx-int8",
    ]
    assert (tmp_path / "out" / "onnx" / "model.int8.onnx").is_file()
    assert (tmp_path / "out" / "inference.md").is_file()
    measured = report.result("onnx-int8")
    assert measured.parity is not None and measured.size_mb < report.result("onnx-fp32").size_mb
    # the ONNX files now match the checkpoint: a second call without data reuses them
    assert onnx_files(ckpt, onnx_dir) == (fp32, int8)
    again = benchmark_model(ckpt, fp32, int8, tmp_path / "out", cfg, baseline=False)
    assert again.result("onnx-int8").parity is None
    assert [v.name for v in again.variants] == ["torch-fp32", "onnx-fp32", "onnx-int8"]
