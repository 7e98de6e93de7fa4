"""ONNX export: dynamic shapes, parity with PyTorch, metadata that travels with the file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pbf_core.deploy.export import INPUT_NAME, OUTPUT_NAME, export_model, export_onnx
from pbf_core.deploy.metadata import read_metadata, set_metadata, spec_metadata
from pbf_core.deploy.runtimes import open_session
from pbf_core.errors import ExportError
from pbf_core.model.spec import ModelSpec

SMALL = (16, 16, 8, 8, 8)


def tiny_unet():
    """Conv-BN-ReLU, a strided stage, nearest upsampling to the skip's size, concat, head."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    class TinyUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.enc2 = nn.Sequential(
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6()
            )
            self.dec = nn.Sequential(nn.Conv2d(24, 8, 3, padding=1), nn.ReLU())
            self.head = nn.Conv2d(8, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.enc1(x)
            up = F.interpolate(self.enc2(a), size=a.shape[2:], mode="nearest")
            return self.head(self.dec(torch.cat([up, a], 1)))

    torch.manual_seed(0)
    model = TinyUNet()
    # Non-trivial BatchNorm statistics, so folding them into the convolutions is exercised.
    for bn in (model.enc1[1], model.enc2[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def plain_graph() -> onnx.ModelProto:
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, "h", "w"])
    y = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1, "h", "w"])
    node = helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])
    return helper.make_model(helper.make_graph([node], "g", [x], [y]))


# --- metadata (no torch) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [0.37, 256, "percentile", ["a", "b", "c"], {"dice": 0.9}, None, True, "0.5"]
)
def test_metadata_round_trips_values_exactly(tmp_path, value):
    model = plain_graph()
    set_metadata(model, {"field": value})
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    assert read_metadata(tmp_path / "m.onnx") == {"field": value}


def test_metadata_replaces_keys_and_keeps_foreign_ones(tmp_path):
    model = plain_graph()
    helper.set_model_props(model, {"author": "someone"})
    set_metadata(model, {"threshold": 0.5, "variant": "onnx-fp32"})
    set_metadata(model, {"variant": "onnx-int8"})
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    assert read_metadata(tmp_path / "m.onnx") == {"threshold": 0.5, "variant": "onnx-int8"}
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["author"] == "someone" and props["pbf.variant"] == '"onnx-int8"'


def test_spec_metadata_rebuilds_the_spec():
    spec = ModelSpec(threshold=0.31, tile_size=320, train_data_digest="abc", metrics={"dice": 0.9})
    meta = spec_metadata(spec, "onnx-fp32")
    assert meta["variant"] == "onnx-fp32"
    fields = {k: v for k, v in meta.items() if k in ModelSpec.model_fields}
    assert ModelSpec.model_validate(fields) == spec


@pytest.mark.parametrize("content", [None, b"", b"not an onnx file"])
def test_read_metadata_rejects_missing_or_corrupt_files(tmp_path, content):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ExportError, match=r"m\.onnx"):
        read_metadata(path)


def test_open_session_rejects_missing_file(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        open_session(tmp_path / "nope.onnx")


# --- export from PyTorch ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_unet()
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    check = export_onnx(model, path, in_channels=3, metadata={"threshold": 0.42, "views": ["a"]})
    return model, path, check


@pytest.mark.slow
def test_export_matches_pytorch_at_other_shapes(exported):
    import torch

    model, path, check = exported
    assert check.within_tolerance and check.max_abs_diff < 1e-4
    assert check.mismatched_mask_fraction == 0.0
    session = open_session(path, threads=1)
    for shape in [(1, 3, 64, 64), (3, 3, 32, 160), (1, 3, 128, 96)]:
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(session.run(None, {INPUT_NAME: x})[0], ref, atol=1e-4)


@pytest.mark.slow
def test_export_has_named_dynamic_dims_opset_and_metadata(exported):
    _, path, _ = exported
    proto = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    # eval-mode export folds BatchNorm into the convolutions
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    assert read_metadata(path) == {"threshold": 0.42, "views": ["a"]}
    assert not list(path.parent.glob("*.data"))  # one self-contained file


@pytest.mark.slow
def test_export_refuses_a_graph_that_differs_from_pytorch(tmp_path):
    import torch

    class Noisy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1] + torch.rand_like(x[:, :1])

    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(Noisy(), tmp_path / "noisy.onnx", in_channels=3)
    assert not (tmp_path / "noisy.onnx").exists()


def test_export_rejects_old_opsets(tmp_path):
    with pytest.raises(ExportError, match="opset must be >= 17"):
        export_onnx(None, tmp_path / "m.onnx", in_channels=3, opset=13)


@pytest.mark.slow
def test_export_model_carries_the_spec(tmp_path):
    import torch

    from pbf_core.deploy.inference import Segmenter
    from pbf_core.model.checkpoints import save_checkpoint
    from pbf_core.model.factory import create_model

    torch.manual_seed(0)
    spec = ModelSpec(decoder_channels=SMALL, tile_size=64, tile_overlap=8, threshold=0.3)
    ckpt = save_checkpoint(
        tmp_path / "model.safetensors", create_model(decoder_channels=SMALL), spec
    )
    exported = export_model(ckpt, tmp_path / "model.onnx")
    assert exported.check.within_tolerance and exported.spec == spec
    assert exported.path == tmp_path / "model.onnx" and exported.checkpoint == ckpt
    meta = read_metadata(tmp_path / "model.onnx")
    assert meta["variant"] == "onnx-fp32" and meta["threshold"] == 0.3
    seg = Segmenter.from_onnx(tmp_path / "model.onnx")
    assert seg.spec == spec
    image = np.random.default_rng(0).random((3, 80, 100), dtype=np.float32)
    ref = Segmenter.from_checkpoint(ckpt).predict_proba(image)
    np.testing.assert_allclose(seg.predict_proba(image), ref, atol=1e-5)
