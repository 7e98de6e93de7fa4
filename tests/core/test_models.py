"""Model factory, ModelSpec and safe checkpoints."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from pydantic import ValidationError

from pbf_core.errors import CheckpointError
from pbf_core.model.checkpoints import load_checkpoint, read_spec, save_checkpoint
from pbf_core.model.factory import create_model
from pbf_core.model.spec import ModelSpec

SMALL = (16, 16, 8, 8, 8)


def small_model(in_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(in_channels=in_channels, decoder_channels=SMALL).eval()


def spec_for(in_channels: int = 3, **kw) -> ModelSpec:
    views = ("a", "b", "c") if in_channels == 3 else ("image",)
    return ModelSpec(in_channels=in_channels, views=views, decoder_channels=SMALL, **kw)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(
    ("arch", "encoder", "decoder"),
    [("unet", "mobilenet_v2", SMALL), ("unet", "resnet18", SMALL), ("fpn", "mobilenet_v2", None)],
)
def test_create_model_output_shape(arch, encoder, decoder, in_channels):
    model = create_model(arch, encoder, in_channels=in_channels, decoder_channels=decoder).eval()
    with torch.no_grad():
        out = model(torch.rand(1, in_channels, 64, 64))
    assert out.shape == (1, 1, 64, 64)


def test_default_model_is_unet_mobilenet_v2_with_shuffle_head():
    model = create_model()
    assert type(model).__name__ == "ShuffleHead"
    assert type(model.base).__name__ == "Unet"
    assert "MobileNet" in type(model.encoder).__name__
    assert type(create_model(head_width=0)).__name__ == "Unet"
    assert type(create_model(head="full")).__name__ == "FullResolutionHead"
    with pytest.raises(ValueError, match=r"unknown head 'half'.*full, shuffle"):
        create_model(head="half")


@pytest.mark.parametrize("in_channels", [1, 3])
def test_full_resolution_head_takes_decoder_features_and_input(in_channels):
    model = create_model(
        in_channels=in_channels, decoder_channels=SMALL, head_width=12, head="full"
    )
    assert model.head[0].in_channels == SMALL[-1] + in_channels
    assert model.head[-1].out_channels == 1


@pytest.mark.parametrize("in_channels", [1, 3])
def test_shuffle_head_sees_every_input_pixel_at_half_resolution(in_channels):
    model = create_model(in_channels=in_channels, decoder_channels=SMALL, head_width=12).eval()
    # decoder stops at half resolution (second-to-last width) + 2x2 blocks of input pixels
    assert model.head[0].in_channels == SMALL[-2] + 4 * in_channels
    assert model.head[-1].out_channels == 4
    x = torch.rand(2, in_channels, 64, 96)
    unshuffled = torch.nn.functional.conv2d(x, model.unshuffle, stride=2)
    assert torch.equal(unshuffled, torch.nn.functional.pixel_unshuffle(x, 2))
    assert "unshuffle" not in model.state_dict()  # fixed, rebuilt with the model
    # one changed input pixel changes the logits at that pixel: full-resolution detail
    with torch.no_grad():
        base = model(x)
        x2 = x.clone()
        x2[0, 0, 31, 47] += 1.0
        diff = (model(x2) - base)[0, 0].abs()
    assert base.shape == (2, 1, 64, 96)
    assert diff[31, 47] > 0


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown encoder 'mobilenet_v9'.*mobilenet_v2.*resnet18"):
        create_model(encoder="mobilenet_v9")


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown architecture 'vnet'.*unet"):
        create_model(arch="vnet")


def test_wrong_channel_count_fails_in_forward():
    model = small_model(in_channels=3)
    with pytest.raises(RuntimeError):
        model(torch.rand(1, 1, 64, 64))


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
@pytest.mark.parametrize("scope", ["encoder", "model"])
def test_local_encoder_weights_are_loaded(tmp_path, fmt, scope):
    from safetensors.torch import save_file

    source = small_model()
    state = (source.encoder if scope == "encoder" else source).state_dict()
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(1)
    model = create_model(encoder_weights=path, decoder_channels=SMALL)
    for k, v in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k


def test_missing_weights_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_model(encoder_weights=tmp_path / "nope.safetensors")


def test_weights_file_of_another_encoder_is_refused(tmp_path):
    from safetensors.torch import save_file

    other = create_model(encoder="resnet18", decoder_channels=SMALL).encoder.state_dict()
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(path))
    with pytest.raises(CheckpointError, match="encoder tensors missing"):
        create_model(encoder_weights=path, decoder_channels=SMALL)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_not_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": _Evil()}))
    with pytest.raises(CheckpointError, match="tensor-only"):
        create_model(encoder_weights=path, decoder_channels=SMALL)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("in_channels", [1, 3])
def test_checkpoint_roundtrip(tmp_path, in_channels):
    model = small_model(in_channels)
    spec = spec_for(in_channels, threshold=0.3, metrics={"dice": 0.9})
    path = save_checkpoint(tmp_path / "m.safetensors", model, spec)
    loaded, spec2 = load_checkpoint(path)
    assert spec2 == spec
    assert read_spec(path) == spec
    x = torch.rand(2, in_channels, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))
    assert not loaded.training


def test_checkpoint_is_plain_safetensors_with_spec(tmp_path):
    from safetensors import safe_open

    path = save_checkpoint(tmp_path / "m.safetensors", small_model(), spec_for())
    with safe_open(str(path), framework="pt") as fh:
        assert ModelSpec.model_validate_json(fh.metadata()["pbf_spec"]).encoder == "mobilenet_v2"


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "not a safetensors"), (b"\x00garbage" * 10, "not a safetensors")],
)
def test_bad_checkpoint_file(tmp_path, content, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")


def test_spec_written_before_the_shuffle_head_reads_as_full_head(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = create_model(decoder_channels=SMALL, head="full", head_width=16).eval()
    path = save_checkpoint(
        tmp_path / "old.safetensors", model, spec_for(head="full", head_width=16)
    )
    old = spec_for(head="full", head_width=16).model_dump(mode="json")
    del old["head"]  # the field did not exist yet
    save_file(load_file(str(path)), str(path), metadata={"pbf_spec": json.dumps(old)})
    loaded, spec = load_checkpoint(path)
    assert spec.head == "full"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_safetensors_without_spec_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a pbf model checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "lie",
    [{"encoder": "resnet18"}, {"head_width": 0}, {"head_width": 8}, {"head": "full"}],
)
def test_spec_that_does_not_match_weights_is_refused(tmp_path, lie):
    path = save_checkpoint(tmp_path / "m.safetensors", small_model(), spec_for())
    from safetensors.torch import load_file, save_file

    lying = spec_for(**lie)
    save_file(load_file(str(path)), str(path), metadata={"pbf_spec": lying.model_dump_json()})
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 3, "views": ("image",)},
        {"tile_size": 100},
        {"tile_overlap": 128},
        {"threshold": 1.5},
        {"unknown_field": 1},
    ],
)
def test_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValidationError):
        ModelSpec(**kwargs)


def test_spec_is_frozen():
    with pytest.raises(ValidationError):
        spec_for().threshold = 0.2
