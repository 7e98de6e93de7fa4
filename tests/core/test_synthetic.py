"""Synthetic PBF builds: layout, determinism, truth consistency, physics the filters rely on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pbf_core.config import SynthConfig
from pbf_core.data.imaging import read_image, read_mask, read_raw_labels
from pbf_core.data.layers import DEFECT_TYPES, defect_code
from pbf_core.data.synthetic import (
    GENERATOR,
    HATCH_ROTATION_DEG,
    NOISE_KINDS,
    generate_build,
    plan_frames,
    render_layer,
)
from pbf_core.errors import DatasetError

SIZE = 64
DARK = {"hole", "horizontal", "vertical"}
BRIGHT = {"incandescence", "spattering"}


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, SynthConfig]:
    cfg = SynthConfig(layers=12, size=SIZE, seed=7, defects_per_layer=4, noise_frames=0.34)
    out = tmp_path_factory.mktemp("synth") / "build"
    manifest = generate_build(out, cfg)
    return out, manifest, cfg


def _layers(manifest: dict) -> list[dict]:
    return [e for e in manifest["layers"] if e["kind"] == "layer"]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_manifest_is_written_and_returned(build):
    out, manifest, cfg = build
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["generator"] == GENERATOR
    assert manifest["config"] == cfg.model_dump()
    assert len(_layers(manifest)) == cfg.layers
    ids = [e["id"] for e in manifest["layers"]]
    assert ids == [f"B{i:04d}" for i in range(1, len(ids) + 1)]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    cfg = SynthConfig(layers=3, size=48, seed=3, noise_frames=0.5)
    generate_build(tmp_path / "one", cfg)
    generate_build(tmp_path / "two", cfg)
    generate_build(tmp_path / "other", cfg.model_copy(update={"seed": 4}))
    one, two, other = (_tree_bytes(tmp_path / d) for d in ("one", "two", "other"))
    assert one == two
    shared = set(one) & set(other)
    assert any(one[f] != other[f] for f in shared if f.startswith("images/"))


def test_layers_are_pure_functions_of_config_and_index(build):
    out, manifest, cfg = build
    entry = _layers(manifest)[5]
    layer = render_layer(cfg, entry["z"])
    for i, view in enumerate("abc"):
        assert np.array_equal(
            read_image(out / "images" / f"{entry['id']}{view}.PNG"), layer.views[i]
        )
    assert np.array_equal(read_mask(out / "truth" / f"{entry['id']}.png"), layer.truth)


def test_layer_files_are_16_bit_and_use_the_range(build):
    out, manifest, _ = build
    for entry in _layers(manifest):
        for view in "abc":
            img = read_image(out / "images" / f"{entry['id']}{view}.PNG")
            assert img.dtype == np.uint16 and img.shape == (SIZE, SIZE)
            assert img.max() > 255 and len(np.unique(img)) > 1000
            # Powder fills most of the plate in a realistic band, not 8-bit values times 256.
            assert 15_000 < np.median(img) < 32_000
            assert np.count_nonzero(img % 256) > 0.9 * img.size
        assert read_raw_labels(out / "types" / f"{entry['id']}.png").dtype == np.uint8


def test_truth_types_and_manifest_agree(build):
    out, manifest, _ = build
    codes = {defect_code(t) for t in DEFECT_TYPES}
    n_defects = 0
    for entry in _layers(manifest):
        truth = read_mask(out / "truth" / f"{entry['id']}.png")
        types = read_raw_labels(out / "types" / f"{entry['id']}.png")
        assert np.array_equal(types > 0, truth)
        assert set(np.unique(types).tolist()) <= codes | {0}
        assert sum(d["area"] for d in entry["defects"]) == int(truth.sum())
        for d in entry["defects"]:
            x0, y0, x1, y1 = d["bbox"]
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            box = types[y0:y1, x0:x1]
            # Instances never share pixels; others of the same type may add to the box.
            assert np.count_nonzero(box == defect_code(d["type"])) >= d["area"]
            n_defects += 1
    assert n_defects > 0


@pytest.mark.parametrize("size", [64, 256])
def test_defect_sizes_are_small_like_real_annotations(size):
    cfg = SynthConfig(layers=1, size=size, seed=11, defects_per_layer=30)
    areas = []
    for z in range(4):
        layer = render_layer(cfg, z)
        areas += [d.area for d in layer.defects]
    assert areas and min(areas) >= 1
    assert max(areas) <= 0.02 * size * size
    if size >= 256:  # median of real instances ≈ 0.005-0.05 % of the image
        assert np.median(areas) < 0.002 * size * size


def test_all_defect_types_occur_and_most_sit_on_parts():
    cfg = SynthConfig(layers=1, size=256, seed=5, defects_per_layer=40)
    defects = [d for z in range(3) for d in render_layer(cfg, z).defects]
    assert {d.type for d in defects} == set(DEFECT_TYPES)
    # Recoater streaks cross the whole plate; the others mostly form where the laser melts.
    local = [d.on_part for d in defects if d.type != "vertical"]
    assert 0.4 < np.mean(local) < 0.95


def test_every_noise_kind_is_present_without_truth(build):
    out, manifest, _ = build
    noise = [e for e in manifest["layers"] if e["kind"] != "layer"]
    assert {e["kind"] for e in noise} == set(NOISE_KINDS)
    for e in noise:
        assert "defects" not in e
        assert not (out / "truth" / f"{e['id']}.png").exists()
        assert not (out / "types" / f"{e['id']}.png").exists()
        assert (out / "images" / f"{e['id']}a.PNG").exists()
        assert (out / "images" / f"{e['id']}b.PNG").exists()
        assert (out / "images" / f"{e['id']}c.PNG").exists() == (e["kind"] != "incomplete")


@pytest.mark.parametrize(
    ("layers", "rate", "expected"),
    [(12, 0.0, 0), (4, 0.5, 2), (8, 0.1, 4), (100, 0.2, 20)],
)
def test_noise_frame_count(layers, rate, expected):
    frames = plan_frames(SynthConfig(layers=layers, size=32, noise_frames=rate))
    assert sum(f.kind == "layer" for f in frames) == layers
    assert sum(f.kind != "layer" for f in frames) == expected


def _frame(out: Path, manifest: dict, kind: str) -> np.ndarray:
    fid = next(e["id"] for e in manifest["layers"] if e["kind"] == kind)
    return read_image(out / "images" / f"{fid}a.PNG")


def test_noise_frames_are_physically_distinct(build):
    out, manifest, _ = build
    blank, saturated = _frame(out, manifest, "blank"), _frame(out, manifest, "saturated")
    assert np.percentile(blank, 99) - np.percentile(blank, 1) < 0.02 * 65535
    assert np.mean(saturated == 65535) > 0.3

    def bright_fraction(img: np.ndarray) -> float:
        # Melted metal is ~1.8x as bright as powder; fresh powder never gets there.
        return float(np.mean(img > 1.5 * np.median(img)))

    layer_bright = [
        bright_fraction(_frame(out, {"layers": [e]}, "layer")) for e in _layers(manifest)
    ]
    assert bright_fraction(_frame(out, manifest, "recoater")) < 0.002 < min(layer_bright)


def _track_direction(img: np.ndarray, mask: np.ndarray) -> float:
    """Dominant texture direction (degrees in [0, 180)) inside ``mask`` from the structure tensor."""
    x = img.astype(np.float32)
    gx = cv2.Sobel(x, cv2.CV_32F, 1, 0)[mask]
    gy = cv2.Sobel(x, cv2.CV_32F, 0, 1)[mask]
    grad = 0.5 * math.degrees(math.atan2(2 * (gx * gy).sum(), (gx * gx - gy * gy).sum()))
    return (grad + 90.0) % 180.0  # tracks run across the gradient


def _angle_gap(a: float, b: float) -> float:
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hatch_angle_rotates_between_layers(seed):
    cfg = SynthConfig(layers=2, size=256, seed=seed, parts=2, defects_per_layer=0)
    measured = []
    for z in (0, 1):
        layer = render_layer(cfg, z)
        inner = cv2.erode(layer.part_mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert inner.sum() > 50
        direction = _track_direction(layer.views.astype(np.float32).mean(axis=0), inner)
        assert _angle_gap(direction, layer.hatch_angle_deg) < 12
        measured.append(direction)
    assert abs(_angle_gap(measured[0], measured[1]) - _angle_gap(0, HATCH_ROTATION_DEG)) < 15


def test_parts_persist_across_layers():
    cfg = SynthConfig(layers=3, size=96, seed=9, defects_per_layer=0)
    a, b = render_layer(cfg, 0).part_mask, render_layer(cfg, 1).part_mask
    assert (a & b).sum() / (a | b).sum() > 0.8


def test_views_differ_in_shading_but_defects_keep_their_sign():
    cfg = SynthConfig(layers=1, size=128, seed=21, defects_per_layer=12)
    checked = 0
    for z in range(3):
        layer = render_layer(cfg, z)
        views = layer.views.astype(np.float32)
        assert not np.allclose(views[0], views[1], atol=2000)
        for d in layer.defects:
            x0, y0, x1, y1 = d.bbox
            own = np.zeros_like(layer.truth)
            own[y0:y1, x0:x1] = layer.types[y0:y1, x0:x1] == defect_code(d.type)
            ring = cv2.dilate(own.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
            ring &= ~layer.truth
            for v in views:
                inside, around = v[own].mean(), v[ring].mean()
                if d.type in DARK:
                    assert inside < around, (z, d)
                else:
                    assert inside > around, (z, d)
            checked += 1
    assert checked >= 10


def test_progress_reports_every_frame(tmp_path):
    calls: list[tuple[int, int]] = []
    cfg = SynthConfig(layers=3, size=32, noise_frames=0.34)
    generate_build(tmp_path / "b", cfg, progress=lambda done, total: calls.append((done, total)))
    total = len(plan_frames(cfg))
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_rebuild_replaces_a_previous_build(tmp_path):
    out = tmp_path / "b"
    generate_build(out, SynthConfig(layers=5, size=32, noise_frames=0))
    generate_build(out, SynthConfig(layers=2, size=32, noise_frames=0))
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        f"B000{i}{v}.PNG" for i in (1, 2) for v in "abc"
    ]
    assert sorted(p.name for p in (out / "truth").iterdir()) == ["B0001.png", "B0002.png"]


def test_refuses_file_or_foreign_directory(tmp_path):
    cfg = SynthConfig(layers=1, size=32)
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        generate_build(path, cfg)
    foreign = tmp_path / "data"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"photo\.jpg"):
        generate_build(foreign, cfg)
    assert (foreign / "images" / "photo.jpg").read_bytes() == b"x"


def test_render_layer_rejects_negative_index():
    with pytest.raises(ValueError, match="z must be"):
        render_layer(SynthConfig(layers=1, size=32), -1)


@pytest.mark.parametrize(
    "bad",
    [
        {"layers": 0},
        {"size": 8},
        {"parts": 0},
        {"defects_per_layer": -1},
        {"noise_frames": 1.5},
        {"colour": "red"},
    ],
)
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValidationError):
        SynthConfig(**bad)
