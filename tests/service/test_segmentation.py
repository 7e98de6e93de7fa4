"""Segmentation and answers without a server: a stand-in runner behind :class:`LayerSegmenter`."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest
from service_support import layer, png_bytes, tiny_spec

from pbf_core.serving.answers import overlay_response, segment_json, summarize
from pbf_core.serving.segmentation import LayerSegmenter
from pbf_core.serving.settings import ServeSettings
from pbf_core.serving.uploads import UploadError

INFO = {"name": "pbf-defect-segmenter", "version": "7", "variant": "int8", "runtime": "fake"}


class FakeRunner:
    """Bright (normalised mean > 0.75) pixels are defects; ``ready`` flips readiness."""

    def __init__(self, ready: bool = True) -> None:
        self.ready, self.described = ready, 0

    def describe(self) -> dict:
        self.described += 1
        if not self.ready:
            return {"ready": False, "error": "int8 model not loaded: loading"}
        return {"ready": True, "spec": tiny_spec().model_dump(mode="json"), "info": INFO}

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        return np.where(tiles.mean(axis=1) > 0.75, 0.99, 0.01).astype(np.float32)


def _upload(tmp_path, **images: np.ndarray) -> dict[str, list]:
    out = {}
    for field, image in images.items():
        path = tmp_path / f"{field}.png"
        path.write_bytes(png_bytes(image))
        out[field] = [path]
    return out


def _triplet(tmp_path, spot=(30, 40, 20)) -> dict[str, list]:
    return _upload(tmp_path, **{v: layer(spot=spot, seed=i) for i, v in enumerate("abc")})


@pytest.fixture
def segmenter() -> LayerSegmenter:
    return LayerSegmenter(FakeRunner(), ServeSettings(max_upload_mb=1, max_pixels=300_000))


def test_not_ready_model_answers_503(tmp_path):
    runner = FakeRunner(ready=False)
    layers = LayerSegmenter(runner, ServeSettings())
    assert not layers.ready
    response = layers.answer(_triplet(tmp_path), segment_json)
    assert response.status_code == 503
    assert json.loads(response.body)["kind"] == "model"
    runner.ready = True
    assert layers.ready and layers.description() == {
        "spec": runner.describe()["spec"],
        "info": INFO,
    }
    before = runner.described
    layers.description()
    assert runner.described == before  # asked once, then kept


def test_segment_json_of_a_bright_square(segmenter, tmp_path):
    body = segmenter.answer(_triplet(tmp_path), segment_json)
    assert body["is_defective"] is True and body["num_components"] == 1
    assert body["threshold"] == 0.5 and body["model"] == INFO and body["input"] == "triplet"
    assert (body["width"], body["height"]) == (128, 96)
    x0, y0, x1, y1 = body["components"][0]["bbox"]
    assert abs(x0 - 40) <= 2 and abs(y0 - 30) <= 2 and abs(x1 - 60) <= 2 and abs(y1 - 50) <= 2
    assert body["summary"].startswith("Defect found: 1 region covering")
    mask = cv2.imdecode(np.frombuffer(base64.b64decode(body["mask_png"]), np.uint8), -1)
    assert mask.shape == (96, 128) and set(np.unique(mask)) == {0, 255}


def test_overlay_response_carries_the_verdict(segmenter, tmp_path):
    response = segmenter.answer(_triplet(tmp_path), overlay_response)
    assert response.media_type == "image/png"
    assert response.headers["x-pbf-defective"] == "true"
    assert response.headers["x-pbf-components"] == "1"
    assert response.headers["x-pbf-model"] == "pbf-defect-segmenter/7/int8"


def test_flat_layer_summary(segmenter, tmp_path):
    flat = np.full((64, 64), 900, np.uint16)
    result, _ = segmenter.segment(_upload(tmp_path, a=flat, b=flat, c=flat))
    assert result.components == ()
    assert summarize(result).startswith("No defect found: highest defect probability 0.01")


@pytest.mark.parametrize(
    ("images", "field", "kind", "words"),
    [
        ({"image": layer()}, "image", "shape", "3 views"),
        (
            {"a": layer(), "b": layer(), "c": layer(size=(64, 64))},
            None,
            "layer_set",
            "sizes differ",
        ),
    ],
)
def test_inputs_that_do_not_fit_the_model(segmenter, tmp_path, images, field, kind, words):
    with pytest.raises(UploadError) as caught:
        segmenter.segment(_upload(tmp_path, **images))
    err = caught.value
    assert (err.status, err.field, err.kind) == (422, field, kind) and words in err.reason


class MarkEverything(FakeRunner):
    """Marks every pixel a defect; its spec keeps to the powder bed or not."""

    def __init__(self, bed_only: bool) -> None:
        super().__init__()
        self.spec = tiny_spec().model_copy(update={"bed_only": bed_only})

    def describe(self) -> dict:
        return {"ready": True, "spec": self.spec.model_dump(mode="json"), "info": INFO}

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        return np.full((tiles.shape[0], *tiles.shape[2:]), 0.99, np.float32)


@pytest.mark.parametrize("bed_only", [True, False])
def test_a_bed_only_model_marks_nothing_on_the_machine_frame(tmp_path, bed_only):
    from pbf_core.config import SynthConfig
    from pbf_core.data.synthetic import render_layer

    framed = render_layer(SynthConfig(layers=1, size=256, seed=2, style="am04"), 0)
    frame = framed.look.frame_px(256)
    layers = LayerSegmenter(MarkEverything(bed_only), ServeSettings(max_pixels=300_000))
    uploads = _upload(tmp_path, **dict(zip("abc", framed.views, strict=True)))
    result, _ = layers.segment(uploads)
    rows, cols = np.flatnonzero(result.mask.any(1)), np.flatnonzero(result.mask.any(0))
    cuts = (rows[0], 255 - rows[-1], cols[0], 255 - cols[-1])
    if bed_only:
        assert all(frame - 1 <= cut <= frame + 8 for cut in cuts)
    else:
        assert result.mask.all()


class FirstRowOfEachTile(FakeRunner):
    """Marks the first row of every tile: what its mirror images add is visible."""

    def __init__(self, flips: bool) -> None:
        super().__init__()
        self.spec = tiny_spec().model_copy(update={"flips": flips, "threshold": 0.5})

    def describe(self) -> dict:
        return {"ready": True, "spec": self.spec.model_dump(mode="json"), "info": INFO}

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        out = np.zeros((tiles.shape[0], *tiles.shape[2:]), np.float32)
        out[:, 0] = 0.9
        return out


@pytest.mark.parametrize("flips", [False, True])
def test_the_service_averages_mirror_images_when_the_spec_says_so(tmp_path, flips):
    layers = LayerSegmenter(FirstRowOfEachTile(flips), ServeSettings(max_pixels=300_000))
    spec = layers._runner.spec
    side = spec.tile_size  # one tile: its first row is the layer's first row
    uploads = _upload(tmp_path, **{v: layer(spot=(10, 10, 4), seed=i, size=(side, side))
                                   for i, v in enumerate("abc")})  # fmt: skip
    result, _ = layers.segment(uploads)
    top, bottom = result.prob[0].mean(), result.prob[-1].mean()
    if flips:  # itself and the left-right image mark the top row, the up-down one the bottom
        assert top == pytest.approx(0.6, abs=1e-5) and bottom == pytest.approx(0.3, abs=1e-5)
        assert result.mask[0].all() and not result.mask[-1].any()
    else:
        assert top == pytest.approx(0.9, abs=1e-5) and bottom == 0.0
