"""Static int8 quantization, calibration tiles, the parity gate, the dynamic baseline."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from pbf_core.config import QuantizeConfig
from pbf_core.deploy.export import INPUT_NAME, OUTPUT_NAME
from pbf_core.deploy.metadata import read_metadata, set_metadata
from pbf_core.deploy.parity import check_parity, match_threshold
from pbf_core.deploy.quantization import (
    quantize_dynamic_torch,
    quantize_static,
    sample_calibration_tiles,
)
from pbf_core.deploy.runtimes import open_session
from pbf_core.errors import QuantizationError
from pbf_core.model.spec import ModelSpec

SPEC = ModelSpec(tile_size=64, tile_overlap=8, decoder_channels=(16, 16, 8, 8, 8))


def tiny_unet_graph(channels: int = 3, seed: int = 0) -> onnx.ModelProto:
    """Conv-ReLU, pool, Conv-ReLU, 2x nearest Resize, Concat, Conv head: the U-Net's op mix.

    Input ``(N, C, H, W)`` with dynamic N, H, W (H, W even); output ``(N, 1, H, W)`` logits.
    """
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    inits = [
        weight("w1", 16, channels, 3, 3),
        weight("b1", 16),
        weight("w2", 16, 16, 3, 3),
        weight("b2", 16),
        weight("w3", 1, 32, 3, 3),
        weight("b3", 1),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    pad = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w1", "b1"], ["c1"], name="conv1", **pad),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", **pad),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Resize", ["r2", "", "scales"], ["up"], name="up", mode="nearest"),
        helper.make_node("Concat", ["up", "r1"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w3", "b3"], [OUTPUT_NAME], name="head", **pad),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_unet",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["batch", channels, "height", "width"]
            )
        ],
        [
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1, "height", "width"]
            )
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.fp32.onnx"
    model = tiny_unet_graph()
    set_metadata(model, {**SPEC.model_dump(mode="json"), "variant": "onnx-fp32"})
    onnx.save_model(model, str(path))
    return path


def images(n: int = 4, size: int = 96, channels: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((channels, size, size), dtype=np.float32) for _ in range(n)]


# --- calibration tiles ---------------------------------------------------------------------------


@pytest.mark.parametrize(("samples", "tile"), [(1, 32), (7, 64), (10, 96)])
def test_calibration_tiles_shape_and_determinism(samples, tile):
    cfg = QuantizeConfig(calibration_samples=samples, seed=3)
    a = sample_calibration_tiles(images(), tile, cfg)
    b = sample_calibration_tiles(images(), tile, cfg)
    assert a.shape == (samples, 3, tile, tile) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_calibration_tiles_are_crops_of_the_images():
    imgs = images(n=1, size=64)
    tiles = sample_calibration_tiles(imgs, 32, QuantizeConfig(calibration_samples=3))
    for t in tiles:
        found = any(
            np.array_equal(imgs[0][:, y : y + 32, x : x + 32], t)
            for y in range(33)
            for x in range(33)
        )
        assert found


def test_defect_tiles_contain_labelled_pixels():
    imgs = images(n=2, size=128)
    masks = [np.zeros((128, 128), bool) for _ in imgs]
    masks[0][100, 10] = masks[1][5, 120] = True
    for img, m in zip(imgs, masks, strict=True):
        img[:, m] = 5.0  # a marker value a tile holds only if it covers the labelled pixel
    cfg = QuantizeConfig(calibration_samples=12, defect_tile_fraction=1.0)
    tiles = sample_calibration_tiles(imgs, 32, cfg, masks)
    assert all((t == 5.0).any() for t in tiles)


@pytest.mark.parametrize(
    ("imgs", "match"),
    [
        ([], "no images"),
        (images(n=1, size=48), "smaller than"),
        ([*images(n=1), *images(n=1, channels=1)], "mixed channel"),
    ],
)
def test_calibration_tiles_reject_bad_images(imgs, match):
    with pytest.raises(QuantizationError, match=match):
        sample_calibration_tiles(imgs, 64, QuantizeConfig(calibration_samples=2))


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"calibration_tile": 100},
        {"calibration_method": "kl"},
        {"activation_type": "int4"},
        {"dice_tolerance": -0.1},
        {"calibration_samples": 0},
        {"unknown": 1},
    ],
)
def test_quantize_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        QuantizeConfig(**bad)


# --- static quantization -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"per_channel": False},
        {"activation_type": "int8"},
        {"calibration_method": "entropy"},
        {"calibration_method": "percentile", "percentile": 99.9},
        {"float_max_channels": 0},
    ],
)
def test_quantize_static_writes_a_smaller_int8_model(fp32_onnx, tmp_path, settings):
    cfg = QuantizeConfig(calibration_samples=4, calibration_batch=2, **settings)
    tiles = sample_calibration_tiles(images(), 64, cfg)
    out = quantize_static(fp32_onnx, tmp_path / "int8.onnx", tiles, cfg)

    model = onnx.load_model(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    quantized_convs = {
        n.name for n in model.graph.node if n.op_type == "Conv" and "DequantizeLinear" in ops
    }
    assert quantized_convs
    meta = read_metadata(out)
    assert meta["variant"] == "onnx-int8"
    assert meta["quantization"] == cfg.model_dump(mode="json")
    assert meta["threshold"] == SPEC.threshold and meta["tile_size"] == SPEC.tile_size

    x = images(n=2, size=64)
    batch = np.stack(x)
    ref = open_session(fp32_onnx, threads=1).run(None, {INPUT_NAME: batch})[0]
    got = open_session(out, threads=1).run(None, {INPUT_NAME: batch})[0]
    assert got.shape == ref.shape == (2, 1, 64, 64)
    # int8 is an approximation: close to fp32 relative to the logits' spread, not equal.
    assert np.abs(got - ref).mean() < 0.1 * ref.std()


@pytest.mark.parametrize(
    ("max_channels", "float_convs"),
    [(0, set()), (1, {"head"}), (8, {"head"}), (16, {"conv1", "conv2", "head"})],
)
def test_narrow_convolutions_stay_in_float(fp32_onnx, tmp_path, max_channels, float_convs):
    cfg = QuantizeConfig(calibration_samples=2, float_max_channels=max_channels)
    tiles = sample_calibration_tiles(images(), 64, cfg)
    model = onnx.load_model(str(quantize_static(fp32_onnx, tmp_path / "q.onnx", tiles, cfg)))
    producers = {o: n for n in model.graph.node for o in n.output}
    weights_dequantized = {
        n.name: n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"
        for n in model.graph.node
        if n.op_type == "Conv"
    }
    assert {name for name, q in weights_dequantized.items() if not q} == float_convs


@pytest.mark.parametrize(
    "tiles",
    [
        np.zeros((0, 3, 64, 64), np.float32),
        np.zeros((2, 64, 64), np.float32),
        np.zeros((2, 3, 64, 64), np.float64),
    ],
)
def test_quantize_static_rejects_bad_tiles(fp32_onnx, tmp_path, tiles):
    with pytest.raises(QuantizationError, match="calibration tiles"):
        quantize_static(fp32_onnx, tmp_path / "q.onnx", tiles)


def test_quantize_static_rejects_missing_model(tmp_path):
    from pbf_core.errors import ExportError

    with pytest.raises(ExportError, match="not found"):
        quantize_static(
            tmp_path / "nope.onnx", tmp_path / "q.onnx", np.zeros((1, 3, 64, 64), np.float32)
        )


# --- parity gate ---------------------------------------------------------------------------------


def masks(seed: int, n: int = 3, shape=(32, 32), p: float = 0.2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(shape) < p for _ in range(n)]


def test_identical_masks_pass():
    truth = masks(0)
    ref = masks(1)
    parity = check_parity("onnx-int8", ref, [m.copy() for m in ref], truth)
    assert parity.passed and parity.reason == "" and parity.images == 3
    assert parity.dice == parity.reference_dice and parity.dice_loss == 0
    assert parity.agreement_dice == parity.agreement_recall == 1.0


def test_empty_masks_and_labels_agree():
    empty = [np.zeros((8, 8), bool)]
    parity = check_parity("v", empty, empty, empty)
    assert parity.passed and parity.dice == parity.agreement_dice == 1.0


def test_losing_pixels_fails_with_the_numbers():
    truth = [np.ones((10, 10), bool)]
    cand = [np.ones((10, 10), bool)]
    cand[0][:2] = False  # 20 of 100 true pixels missed: recall 0.8, Dice 0.889
    parity = check_parity("onnx-int8", truth, cand, truth, QuantizeConfig(), "weak")
    assert not parity.passed and parity.labels == "weak"
    assert parity.recall == pytest.approx(0.8) and parity.dice == pytest.approx(160 / 180)
    assert parity.recall_loss == pytest.approx(0.2) and parity.agreement_recall == 0.8
    assert "recall 0.8000 vs fp32 1.0000: loses 0.2000" in parity.reason
    assert "Dice 0.8889" in parity.reason
    assert parity.to_dict()["dice_loss"] == round(1 - 160 / 180, 4)


def test_gains_pass_even_when_masks_disagree():
    truth = [np.zeros((10, 10), bool)]
    truth[0][:5] = True
    ref = [np.ones((10, 10), bool)]  # fp32 over-segments: Dice 0.667
    cand = [truth[0].copy()]  # the variant happens to hit the truth
    parity = check_parity("v", ref, cand, truth)
    assert parity.passed and parity.dice == 1.0 and parity.dice_loss < 0
    assert parity.agreement_dice == pytest.approx(2 / 3) and parity.agreement_recall == 0.5


@pytest.mark.parametrize(("tol", "passed"), [(0.0, False), (0.05, True)])
def test_tolerance_decides(tol, passed):
    truth = [np.ones((100, 10), bool)]
    cand = [np.ones((100, 10), bool)]
    cand[0][0, :3] = False  # recall 0.997
    cfg = QuantizeConfig(dice_tolerance=tol, recall_tolerance=tol)
    assert check_parity("v", truth, cand, truth, cfg).passed is passed


@pytest.mark.parametrize(
    ("ref", "cand", "match"),
    [
        (masks(0, n=2), masks(1, n=3), "3 masks to compare with 2"),
        ([], [], "0 masks"),
        (masks(0, n=1), masks(1, n=1, shape=(16, 32)), "mask shape"),
    ],
)
def test_parity_rejects_mismatched_sets(ref, cand, match):
    with pytest.raises(QuantizationError, match=match):
        check_parity("v", ref, cand, ref)


# --- per-variant threshold ----------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 0.1, -0.15])
def test_match_threshold_undoes_a_score_shift(shift):
    rng = np.random.default_rng(0)
    prob = [rng.random((64, 64)).astype(np.float32) for _ in range(3)]
    reference = [p >= 0.5 for p in prob]
    shifted = [np.clip(p + shift, 0, 1) for p in prob]
    threshold, agreement = match_threshold(reference, shifted)
    assert threshold == pytest.approx(0.5 + shift, abs=0.006)
    assert agreement > 0.99


def test_match_threshold_with_empty_reference_picks_a_threshold_keeping_masks_empty():
    prob = [np.full((8, 8), 0.3, np.float32)]
    threshold, agreement = match_threshold([np.zeros((8, 8), bool)], prob)
    assert threshold > 0.3 and agreement == 1.0


# --- dynamic baseline ----------------------------------------------------------------------


def test_dynamic_baseline_quantizes_linear_layers_only():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)
    ).eval()
    x = torch.rand(1, 3, 8, 8)
    quantized = quantize_dynamic_torch(model)
    assert type(quantized[0]) is torch.nn.Conv2d  # why the prototype saw no gain on a U-Net
    assert type(quantized[2]) is not torch.nn.Linear
    with torch.inference_mode():
        torch.testing.assert_close(quantized[0](x), model[0](x))
        torch.testing.assert_close(quantized(x), model(x), atol=0.05, rtol=0.05)


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, prepared_synthetic):
    """An untrained checkpoint with the split.json `pbf train` would write beside it."""
    import torch

    from pbf_core.config import TrainConfig
    from pbf_core.data.dataset import open_dataset
    from pbf_core.data.split import split_dataset
    from pbf_core.model.checkpoints import save_checkpoint
    from pbf_core.model.factory import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    split_dataset(open_dataset(prepared_synthetic), TrainConfig()).split.save(
        path.parent / "split.json"
    )
    return save_checkpoint(path, create_model(decoder_channels=SPEC.decoder_channels), SPEC)


@pytest.mark.slow
def test_quantize_model_writes_gated_variants(tiny_checkpoint, prepared_synthetic, tmp_path):
    from pbf_core.data.dataset import open_dataset
    from pbf_core.data.split import Split
    from pbf_core.deploy.export import export_model
    from pbf_core.deploy.quantization import quantize_model

    cfg = QuantizeConfig(calibration_samples=4, dice_tolerance=1.0, recall_tolerance=1.0)
    split = Split.load(tiny_checkpoint.parent / "split.json")
    dataset = open_dataset(prepared_synthetic).with_split(split)
    exported = export_model(tiny_checkpoint, tmp_path / "q" / "model.fp32.onnx")
    result = quantize_model(exported, dataset, cfg, tmp_path / "q")
    report = json.loads(result.report.read_text())
    assert result.calibration_labels == report["calibration_labels"] == SPEC.labels
    assert result.thresholds["onnx-fp32"] == SPEC.threshold
    assert read_metadata(result.int8)["threshold"] == report["thresholds"]["onnx-int8"]
    assert read_metadata(result.int8)["reference_threshold"] == SPEC.threshold
    assert report["threshold_matched_on"] == "val"
    assert result.fp32.is_file() and result.int8.is_file()
    assert result.int8.stat().st_size < result.fp32.stat().st_size / 2
    assert result.parity["onnx-fp32"].agreement_dice > 0.99 and result.passed
    assert report["evaluated_on"] == "test" and report["calibration_tiles"] == [4, 3, 64, 64]
    assert report["export_check"]["within_tolerance"]
    assert set(report["parity"]) == {"onnx-fp32", "onnx-int8"}
    for path, variant in ((result.fp32, "onnx-fp32"), (result.int8, "onnx-int8")):
        meta = read_metadata(path)
        assert meta["variant"] == variant and meta["created_at"] == SPEC.created_at
        assert meta["parity"] == result.parity[variant].to_dict()


@pytest.mark.slow
def test_quantize_cli_exits_1_when_the_gate_fails(tiny_checkpoint, prepared_synthetic, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    preset = tmp_path / "strict.yaml"
    preset.write_text("calibration_samples: 2\ndice_tolerance: 0.0\nrecall_tolerance: 0.0\n")
    args = ["quantize", str(tiny_checkpoint), "--calib", str(prepared_synthetic)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "q"), "--config", str(preset)])
    report = json.loads((tmp_path / "q" / "quantize.json").read_text())
    assert result.exit_code == (0 if report["passed"] else 1), result.output
    assert "parity" in result.output
    bad = CliRunner().invoke(app, [*args[:2], "--calib", str(tmp_path), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "manifest" in bad.output
