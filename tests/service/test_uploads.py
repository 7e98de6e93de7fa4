"""Upload checks without a server: which fields, how many files, size and image limits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from service_support import layer, png_bytes

from pbf_core.serving.uploads import UploadError, choose_mode, read_upload, read_uploads


def _files(tmp_path, **fields: int) -> dict[str, list]:
    """``field=n`` → n PNG files of a small layer in that field."""
    data = png_bytes(layer(size=(32, 32), spot=None))
    out = {}
    for field, n in fields.items():
        out[field] = []
        for i in range(n):
            path = tmp_path / f"{field}{i}.png"
            path.write_bytes(data)
            out[field].append(path)
    return out


@pytest.mark.parametrize(
    ("fields", "mode"),
    [
        ({"image": 1}, "single"),
        ({"a": 1, "b": 1, "c": 1}, "triplet"),
        ({"image": 1, "a": 0}, "single"),
    ],
)
def test_choose_mode(tmp_path, fields, mode):
    assert choose_mode(_files(tmp_path, **fields)) == mode


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({}, None, "no file uploaded"),
        ({"image": 0}, None, "no file uploaded"),
        ({"a": 2, "b": 1, "c": 1}, "a", "2 files in field 'a'"),
        ({"image": 1, "a": 1, "b": 1, "c": 1}, "image", "not both"),
        ({"a": 1, "b": 1}, "c", "missing 'c'"),
        ({"b": 1}, "a", "missing 'a', 'c'"),
    ],
)
def test_refused_field_combinations(tmp_path, fields, field, words):
    with pytest.raises(UploadError) as caught:
        choose_mode(_files(tmp_path, **fields))
    err = caught.value
    assert (err.status, err.field, err.kind) == (400, field, "request")
    assert words in err.reason


def test_read_uploads_decodes_a_triplet_as_stored(tmp_path):
    raw, mode = read_uploads(_files(tmp_path, a=1, b=1, c=1), max_mb=1, max_pixels=10_000)
    assert mode == "triplet" and sorted(raw) == ["a", "b", "c"]
    assert raw["a"].shape == (32, 32) and raw["a"].dtype == np.uint16


@pytest.mark.parametrize(
    ("content", "limits", "status", "words"),
    [
        (b"x" * 2048, {"max_mb": 0.001}, 413, "2,048 bytes exceeds 0.001 MiB"),
        (b"hello", {}, 422, "not a recognised image"),
        (b"", {}, 422, "empty file"),
        (png_bytes(np.zeros((50, 50), np.uint8)), {"max_pixels": 100}, 422, "too many pixels"),
        (png_bytes(np.zeros((1, 3000), np.uint16)), {"max_aspect": 16}, 422, "3,000:1"),
        (png_bytes(np.zeros((170, 10), np.uint8)), {"max_aspect": 16}, 422, "over the limit 16:1"),
    ],
)
def test_read_upload_refuses(tmp_path, content, limits, status, words):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    args = {"max_mb": 1.0, "max_pixels": 10_000, **limits}
    with pytest.raises(UploadError) as caught:
        read_upload("image", path, **args)
    assert (caught.value.status, caught.value.field) == (status, "image")
    assert words in caught.value.reason


def test_error_answers_as_json():
    response = UploadError(413, "a", "too big", "size").response()
    assert response.status_code == 413
    assert json.loads(response.body) == {"error": "too big", "kind": "size", "field": "a"}


def test_read_upload_takes_an_image_at_the_aspect_limit(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(np.zeros((10, 160), np.uint8)))
    assert read_upload("image", path, 1.0, 10_000, max_aspect=16).shape == (10, 160)


def test_error_answers_carry_their_headers():
    response = UploadError(503, None, "busy", "busy", {"Retry-After": "3"}).response()
    assert response.status_code == 503 and response.headers["retry-after"] == "3"
