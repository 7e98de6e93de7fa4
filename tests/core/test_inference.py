"""Tiled inference, components, overlays, input preparation and the Segmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbf_core.data.imaging import bed_mask, normalize
from pbf_core.deploy.inference import Segmenter
from pbf_core.deploy.inputs import model_input, normalized_views, prepare_input
from pbf_core.deploy.overlays import (
    OVERLAY_RED,
    OVERLAY_YELLOW,
    Component,
    find_components,
    render_overlay,
)
from pbf_core.deploy.tiling import mirror_average, predict_layer, predict_tiled
from pbf_core.model.checkpoints import save_checkpoint
from pbf_core.model.factory import create_model
from pbf_core.model.spec import ModelSpec

SMALL = (16, 16, 8, 8, 8)


def first_channel(batch: np.ndarray) -> np.ndarray:
    """A 'model' whose probability is its input's first channel: stitching must give it back."""
    return batch[:, 0].copy()


@pytest.mark.parametrize(("h", "w"), [(64, 64), (100, 150), (40, 70), (257, 64)])
@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (96, 0)])
def test_predict_tiled_reassembles_the_layer(h, w, tile, overlap):
    rng = np.random.default_rng(0)
    image = rng.random((2, h, w)).astype(np.float32)
    prob = predict_tiled(first_channel, image, tile, overlap, batch_size=3)
    assert prob.shape == (h, w) and prob.dtype == np.float32
    np.testing.assert_allclose(prob, image[0], atol=1e-5)


def test_predict_tiled_passes_whole_tiles_in_batches():
    shapes = []

    def spy(batch):
        shapes.append(batch.shape)
        return batch[:, 0]

    predict_tiled(spy, np.zeros((3, 100, 100), np.float32), 64, 16, batch_size=2)
    assert all(s[1:] == (3, 64, 64) for s in shapes)
    assert sum(s[0] for s in shapes) == 4 and max(s[0] for s in shapes) == 2


@pytest.mark.parametrize(
    ("image", "tile", "overlap", "match"),
    [
        (np.zeros((64, 64), np.float32), 64, 0, "C, H, W"),
        (np.zeros((1, 64, 64), np.float32), 60, 0, "multiple of 32"),
        (np.zeros((1, 64, 64), np.float32), 64, 32, "overlap"),
    ],
)
def test_predict_tiled_bad_input(image, tile, overlap, match):
    with pytest.raises(ValueError, match=match):
        predict_tiled(first_channel, image, tile, overlap)


def test_find_components():
    mask = np.zeros((20, 30), bool)
    prob = np.zeros((20, 30), np.float32)
    mask[2:4, 5:9] = True
    prob[3, 6] = 0.7
    mask[10, 20] = mask[11, 21] = True  # diagonal neighbours: one component (8-connectivity)
    prob[10, 20] = 0.9
    comps = find_components(mask, prob)
    assert comps == (
        Component(20, 10, 22, 12, 2, pytest.approx(0.9)),
        Component(5, 2, 9, 4, 8, pytest.approx(0.7)),
    )
    assert comps[1].to_dict() == {"bbox": [5, 2, 9, 4], "area_px": 8, "max_prob": 0.7}
    assert find_components(np.zeros((4, 4), bool), np.zeros((4, 4), np.float32)) == ()


@pytest.mark.parametrize(
    "image",
    [
        np.full((3, 32, 32), 0.5, np.float32),
        np.full((32, 32), 0.5, np.float32),
        np.full((32, 32), 32768, np.uint16),
    ],
)
def test_render_overlay(image):
    mask = np.zeros((32, 32), bool)
    mask[10:14, 10:14] = True
    comps = find_components(mask, mask.astype(np.float32))
    out = render_overlay(image, mask, comps)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    r, g, b = out[12, 12].astype(int)
    assert r > g and r > b  # translucent red over grey
    assert tuple(out[9, 9]) == OVERLAY_YELLOW  # box corner, one pixel outside the defect
    assert out[0, 0, 0] == out[0, 0, 1] == out[0, 0, 2]  # untouched grey
    assert OVERLAY_RED == (255, 0, 0)


def test_render_overlay_size_mismatch():
    with pytest.raises(ValueError, match="differ"):
        render_overlay(np.zeros((8, 8), np.float32), np.zeros((9, 8), bool))


def spec(in_channels: int = 3, **kw) -> ModelSpec:
    views = ("a", "b", "c") if in_channels == 3 else ("image",)
    return ModelSpec(
        in_channels=in_channels,
        views=views,
        decoder_channels=SMALL,
        tile_size=64,
        tile_overlap=16,
        **kw,
    )


def test_prepare_input_variants():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65535, (3, 40, 50), dtype=np.uint16)
    from_stack = prepare_input(raw, spec(3))
    from_views = prepare_input({"a": raw[0], "b": raw[1], "c": raw[2]}, spec(3))
    assert from_stack.shape == (3, 40, 50) and from_stack.dtype == np.float32
    np.testing.assert_array_equal(from_stack, from_views)
    assert from_stack.min() == 0.0 and from_stack.max() == 1.0  # percentile stretch per view
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    assert prepare_input(rgb, spec(1)).shape == (1, 40, 50)
    views_as_rgb = prepare_input(np.moveaxis(raw, 0, 2), spec(3))
    np.testing.assert_array_equal(views_as_rgb, from_stack)
    prepared = rng.random((3, 40, 50)).astype(np.float32)
    assert prepare_input(prepared, spec(3)) is not None


def test_prepare_input_normalises_as_the_model_was_trained():
    """A model trained on flat-fielded layers gets flat-fielded input, view by view."""
    rng = np.random.default_rng(1)
    light = np.linspace(0.5, 1.0, 64, dtype=np.float32)[None, None, :]
    raw = (20_000 * light * (1 + 0.05 * rng.standard_normal((3, 48, 64)))).astype(np.uint16)
    flat = prepare_input(raw, spec(3, normalization="flatfield"))
    for view, expected in zip(raw, flat, strict=True):
        np.testing.assert_array_equal(normalize(view, "flatfield"), expected)
    assert not np.array_equal(flat, prepare_input(raw, spec(3)))


@pytest.mark.parametrize(
    ("raw", "channels", "match"),
    [
        ({"a": np.zeros((8, 8), np.uint8)}, 3, "missing view"),
        (np.zeros((8, 8), np.uint16), 3, "takes 3 views"),
        (np.zeros((2, 8, 8), np.float32), 3, r"\(3, H, W\)"),
        (np.zeros((5, 8, 8, 2), np.uint8), 1, "cannot read"),
    ],
)
def test_prepare_input_bad(raw, channels, match):
    with pytest.raises(ValueError, match=match):
        prepare_input(raw, spec(channels))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return create_model(in_channels=3, decoder_channels=SMALL).eval()


def test_segmenter_from_model_and_checkpoint(tmp_path, tiny_model):
    image = np.random.default_rng(0).random((3, 80, 100)).astype(np.float32)
    direct = Segmenter.from_model(tiny_model, spec(threshold=0.4))
    result = direct.segment(image)
    assert result.prob.shape == (80, 100) and result.prob.dtype == np.float32
    assert result.mask.dtype == bool and result.threshold == 0.4
    np.testing.assert_array_equal(result.mask, result.prob >= 0.4)
    assert len(result.components) == len(find_components(result.mask, result.prob))
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model, spec(threshold=0.4))
    loaded = Segmenter.from_checkpoint(path)
    np.testing.assert_allclose(loaded.predict_proba(image), result.prob, atol=1e-5)
    assert loaded.segment(image, threshold=0.99).threshold == 0.99


def test_segmenter_wrong_channel_count(tiny_model):
    seg = Segmenter.from_model(tiny_model, spec(3))
    with pytest.raises(ValueError, match="views"):
        seg.segment(np.zeros((64, 64), np.uint16))


@pytest.fixture(scope="module")
def bare_onnx(tmp_path_factory, tiny_model):
    """The tiny model exported once, without pbf metadata (the export takes ~20 s)."""
    from pbf_core.deploy.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "bare.onnx"
    export_onnx(tiny_model, path, in_channels=3)
    return path


@pytest.mark.slow
def test_segmenter_onnx_reads_spec_from_metadata(tmp_path, tiny_model, bare_onnx):
    import onnx

    from pbf_core.deploy.metadata import set_metadata

    s = spec(threshold=0.4)
    proto = onnx.load_model(str(bare_onnx))
    set_metadata(proto, s.model_dump(mode="json"))
    onnx.save_model(proto, str(tmp_path / "m.onnx"))
    image = np.random.default_rng(1).random((3, 70, 90)).astype(np.float32)
    onnx_seg = Segmenter.from_onnx(tmp_path / "m.onnx")
    assert onnx_seg.spec == s
    torch_seg = Segmenter.from_model(tiny_model, s)
    np.testing.assert_allclose(
        onnx_seg.predict_proba(image), torch_seg.predict_proba(image), atol=1e-4
    )


@pytest.mark.slow
def test_onnx_without_spec_is_refused(bare_onnx):
    with pytest.raises(ValueError, match="no pbf"):
        Segmenter.from_onnx(bare_onnx)


def test_group_layer_files():
    from pathlib import Path

    from pbf_core.deploy.inputs import group_layer_files

    files = [Path(f) for f in ("x/B1a.png", "x/B1b.png", "x/B1c.png", "x/other.png")]
    groups = group_layer_files(files, ("a", "b", "c"))
    assert [g[0] for g in groups] == ["B1", "other"]
    assert groups[0][1]["b"] == Path("x/B1b.png") and groups[1][1] == {"": Path("x/other.png")}
    assert group_layer_files(files[:1], ("image",)) == [("B1a", {"": files[0]})]
    with pytest.raises(ValueError, match="missing view"):
        group_layer_files(files[:2], ("a", "b", "c"))


def ones(batch: np.ndarray) -> np.ndarray:
    """A 'model' that marks every pixel a defect."""
    return np.ones((batch.shape[0], *batch.shape[2:]), np.float32)


def _layer(style: str):
    from pbf_core.config import SynthConfig
    from pbf_core.data.synthetic import render_layer

    return render_layer(SynthConfig(layers=1, size=256, seed=2, style=style), 0)


def test_a_bed_only_model_marks_nothing_on_the_frame_around_the_bed():
    layer = _layer("am04")  # a machine frame around the bed
    views, frame = layer.views, layer.look.frame_px(256)
    spec = ModelSpec(tile_size=64, tile_overlap=8, bed_only=True)
    prob = Segmenter(ones, spec).predict_proba({"a": views[0], "b": views[1], "c": views[2]})
    rows, cols = np.flatnonzero((prob > 0).any(1)), np.flatnonzero((prob > 0).any(0))
    for cut in (rows[0], 255 - rows[-1], cols[0], 255 - cols[-1]):
        assert frame - 1 <= cut <= frame + 8
    assert prob[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].min() == 1.0  # a box, all kept
    everywhere = Segmenter(ones, spec.model_copy(update={"bed_only": False})).predict_proba(views)
    assert everywhere.min() == 1.0


def test_mirror_average_maps_each_mirror_back():
    image = np.zeros((3, 8, 12), np.float32)
    diagonal = lambda x: np.eye(x.shape[1], x.shape[2], dtype=np.float32)  # noqa: E731
    np.testing.assert_array_equal(mirror_average(diagonal, image, flips=False), diagonal(image))
    out = mirror_average(diagonal, image)
    expected = (diagonal(image) + diagonal(image)[:, ::-1] + diagonal(image)[::-1]) / 3
    np.testing.assert_allclose(out, expected, atol=1e-7)
    assert out.dtype == np.float32 and out.shape == (8, 12)


def test_a_flips_model_averages_its_mirror_images():
    def first_row_of_each_tile(batch: np.ndarray) -> np.ndarray:
        out = np.zeros((batch.shape[0], *batch.shape[2:]), np.float32)
        out[:, 0] = 0.9
        return out

    spec = ModelSpec(tile_size=64, tile_overlap=8, threshold=0.5)
    image = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    plain = Segmenter(first_row_of_each_tile, spec).predict_proba(image)
    flipped = Segmenter(first_row_of_each_tile, spec.model_copy(update={"flips": True}))
    prob = flipped.predict_proba(image)
    assert plain[0].min() == pytest.approx(0.9) and plain[-1].max() == 0.0
    assert prob[0].min() == pytest.approx(0.6) and prob[-1].min() == pytest.approx(0.3)
    assert predict_layer(first_row_of_each_tile, image, spec).max() == pytest.approx(0.9)


def test_model_input_finds_the_bed_once_for_a_bed_only_model():
    views = _layer("am04").views
    spec = ModelSpec(tile_size=64, tile_overlap=8, bed_only=True, normalization="bed")
    x, bed = model_input(views, spec)
    np.testing.assert_array_equal(x, normalized_views(views, spec))
    np.testing.assert_array_equal(bed, bed_mask(views))
    assert not bed.all() and bed.any()
    assert model_input(views, spec.model_copy(update={"bed_only": False}))[1] is None
    assert model_input(x, spec)[1] is None  # already normalised: no bed to find


def test_a_bed_only_model_takes_a_prepared_layers_bed_and_keeps_a_frameless_layer_whole():
    spec = ModelSpec(tile_size=64, tile_overlap=8, bed_only=True)
    seg = Segmenter(ones, spec)
    prepared = np.random.default_rng(0).random((3, 96, 96)).astype(np.float32)
    assert seg.predict_proba(prepared).min() == 1.0  # no bed to go by: the whole picture
    bed = np.zeros((96, 96), bool)
    bed[10:80, 20:90] = True
    assert np.array_equal(seg.segment(prepared, bed=bed).mask, bed)
    assert seg.predict_proba(_layer("classic").views).min() == 1.0
