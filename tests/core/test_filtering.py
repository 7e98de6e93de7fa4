"""Reading layer sets and rejecting unusable frames, each with its code and a reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from pbf_core.config import FilterConfig, PrepareConfig, SynthConfig
from pbf_core.data.filtering import (
    REJECT_CODES,
    FrameRejected,
    LayerSet,
    frame_problem,
    load_layer_set,
    part_fraction,
)
from pbf_core.data.imaging import normalize, read_mask, write_mask, write_raw_png
from pbf_core.data.ingest import discover
from pbf_core.data.layers import DEFECT_TYPES, LayerRecord, defect_code

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REAL = SHARED / "data" / "real"
AM04 = REAL / "am04"
SUPERAMS = REAL / "superams" / "Job_Images"
CFG = PrepareConfig()
N = 64


# --------------------------------------------------------------------------- crafted frames


def powder(rng: np.random.Generator, n: int = N) -> np.ndarray:
    """Powder bed: correlated grain texture, illumination gradient, full-width recoater streaks."""
    grains = cv2.GaussianBlur(rng.normal(0, 1, (n, n)).astype(np.float32), (0, 0), 1.0)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    img = 20000 + 4000 * xx + 2000 * yy + 1800 * grains + 600 * rng.normal(0, 1, (n, n))
    for y in rng.integers(0, n - 3, 3):
        img[y : y + 2, :] += rng.choice([-1, 1]) * 4000
    return img


def with_part(img: np.ndarray, frac: float = 0.02, angle: float = 30.0) -> np.ndarray:
    """Add a bright hatched square part of ``frac`` of the image area."""
    n = img.shape[0]
    side = int(np.sqrt(frac) * n)
    y0 = x0 = n // 3
    yy, xx = np.mgrid[0:side, 0:side]
    a = np.deg2rad(angle)
    hatch = np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / 4)
    out = img.copy()
    out[y0 : y0 + side, x0 : x0 + side] += 8000 + 3000 * hatch
    return out


def u16(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 65535).astype(np.uint16)


def layer_stack(seed: int = 0, part: bool = True) -> np.ndarray:
    """``(3, N, N)`` uint16 triplet, the three views differently lit."""
    rng = np.random.default_rng(seed)
    views = []
    for gain in (1.0, 0.9, 1.1):
        img = powder(rng)
        views.append(u16((with_part(img) if part else img) * gain))
    return np.stack(views)


def write_triplet(root: Path, lid: str, stack: np.ndarray) -> LayerRecord:
    views = {}
    for v, img in zip("abc", stack, strict=True):
        views[v] = root / f"{lid}{v}.PNG"
        write_raw_png(views[v], img)
    return LayerRecord(layer_id=lid, views=views)


def rejected(record: LayerRecord, cfg: PrepareConfig = CFG) -> FrameRejected:
    with pytest.raises(FrameRejected) as err:
        load_layer_set(record, cfg)
    assert err.value.layer_id == record.layer_id
    assert err.value.code in REJECT_CODES
    assert str(err.value).startswith(f"layer {record.layer_id}: {err.value.code}: ")
    return err.value


# --------------------------------------------------------------------------- usable layers


def test_triplet_loads_keeping_16_bit_values(tmp_path):
    stack = layer_stack()
    assert stack.max() > 255
    layer = load_layer_set(write_triplet(tmp_path, "B1", stack), CFG)
    assert isinstance(layer, LayerSet)
    assert layer.views == ("a", "b", "c")
    assert layer.raw.dtype == np.uint16
    np.testing.assert_array_equal(layer.raw, stack)
    assert layer.image.dtype == np.float32 and layer.image.shape == (3, N, N)
    assert layer.image.min() >= 0.0 and layer.image.max() <= 1.0
    # every view stretched on its own, from the 16-bit values (no 8-bit step)
    for i in range(3):
        np.testing.assert_allclose(layer.image[i], normalize(stack[i], "percentile", 0.5, 99.5))
    assert len(np.unique(layer.image[0])) > 256
    assert layer.truth is None and layer.types is None


def test_minmax_normalisation_option(tmp_path):
    stack = layer_stack()
    cfg = PrepareConfig(normalization="minmax")
    layer = load_layer_set(write_triplet(tmp_path, "B1", stack), cfg)
    assert layer.image[1].min() == 0.0 and layer.image[1].max() == 1.0


def test_raw_files_never_modified(tmp_path):
    rec = write_triplet(tmp_path, "B1", layer_stack())
    write_mask(tmp_path / "truth" / "B1.png", np.zeros((N, N), bool))
    rec = LayerRecord(rec.layer_id, rec.views, truth=tmp_path / "truth" / "B1.png")
    before = {p: hashlib.sha256(p.read_bytes()).digest() for p in tmp_path.rglob("*.*")}
    load_layer_set(rec, CFG)
    after = {p: hashlib.sha256(p.read_bytes()).digest() for p in tmp_path.rglob("*.*")}
    assert before == after


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(("missing", "reason"), [("c", "missing view c"), ("bc", "views b, c")])
def test_incomplete_triplet(tmp_path, missing, reason):
    rec = write_triplet(tmp_path, "B1", layer_stack())
    views = {v: (None if v in missing else p) for v, p in rec.views.items()}
    err = rejected(LayerRecord("B1", views))
    assert err.code == "incomplete"
    assert reason in err.reason


def _truncated(path: Path) -> None:
    write_raw_png(path, layer_stack()[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _float_tiff(path: Path) -> None:
    assert cv2.imwrite(str(path), np.zeros((N, N), np.float32))


@pytest.mark.parametrize(
    ("name", "spoil", "message"),
    [
        ("B1c.PNG", _truncated, "corrupt or truncated"),
        ("B1c.PNG", lambda p: p.write_bytes(b""), "empty file"),
        ("B1c.PNG", lambda p: p.write_text("not an image"), "not a recognised image format"),
        ("B1c.PNG", lambda p: p.unlink(), "file not found"),
        ("B1c.tif", _float_tiff, "unsupported bit depth float32"),
    ],
)
def test_unreadable_view_names_the_file(tmp_path, name, spoil, message):
    rec = write_triplet(tmp_path, "B1", layer_stack())
    bad = tmp_path / name
    if not bad.exists():
        bad.write_bytes(b"x")
    spoil(bad)
    err = rejected(LayerRecord("B1", {**rec.views, "c": bad}))
    assert err.code == "unreadable"
    assert str(bad) in err.reason and message in err.reason


def test_too_many_pixels_is_unreadable(tmp_path):
    rec = write_triplet(tmp_path, "B1", layer_stack())
    err = rejected(rec, PrepareConfig(max_pixels=N * N - 1))
    assert err.code == "unreadable" and "too many pixels" in err.reason


def test_views_of_different_size(tmp_path):
    rec = write_triplet(tmp_path, "B1", layer_stack())
    write_raw_png(rec.views["b"], layer_stack()[1][:, :-4])
    err = rejected(rec)
    assert err.code == "size_mismatch"
    assert "a=64x64, b=60x64, c=64x64" in err.reason


def test_views_of_different_bit_depth(tmp_path):
    rec = write_triplet(tmp_path, "B1", layer_stack())
    write_raw_png(rec.views["c"], (layer_stack()[2] // 256).astype(np.uint8))
    err = rejected(rec)
    assert err.code == "size_mismatch"
    assert "bit depths differ (a=uint16, b=uint16, c=uint8)" in err.reason


def _dark(stack: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    out = stack.copy()
    out[1] = u16(500 + 40 * rng.normal(0, 1, stack[1].shape))  # lamp b off: dark + read noise
    return out


def _clipped(stack: np.ndarray) -> np.ndarray:
    out = stack.copy()
    out[:, : N // 3] = 65535  # a third of the plate clips under every lamp
    return out


def _white(stack: np.ndarray) -> np.ndarray:
    return np.full_like(stack, 65535)


def _powder_only(stack: np.ndarray) -> np.ndarray:
    return layer_stack(seed=5, part=False)


@pytest.mark.parametrize(
    ("spoil", "code", "reason"),
    [
        (_dark, "blank", "view b: p99 - p1 = "),
        (lambda s: np.zeros_like(s), "blank", "view a"),
        (_clipped, "saturated", "view a: 32.8% of pixels at the top code 65535"),
        (_white, "saturated", "100.0% of pixels"),
        (_powder_only, "no_content", "powder- or recoater-only frame"),
    ],
)
def test_frame_rejections(tmp_path, spoil, code, reason):
    err = rejected(write_triplet(tmp_path, "B7", spoil(layer_stack())))
    assert err.code == code
    assert reason in err.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (np.full((N, N), 7, np.uint8), "blank"),
        (np.where(np.eye(N, dtype=bool), 0, 255).astype(np.uint8), "saturated"),
        (np.tile(np.arange(N, dtype=np.uint8) * 4, (N, 1)), None),  # 8-bit ramp, single view
        (layer_stack(), None),
        (layer_stack(part=False), "no_content"),
        (layer_stack(part=False)[:2], None),  # not a triplet: no content check by default
    ],
)
def test_frame_problem_is_a_pure_check(raw, expected):
    before = raw.copy()
    problem = frame_problem(raw, FilterConfig())
    assert (problem[0] if problem else None) == expected
    np.testing.assert_array_equal(raw, before)


@pytest.mark.parametrize(
    ("mode", "views", "rejects"),
    [
        ("triplets", ("a", "b", "c"), True),
        ("triplets", ("image",), False),
        ("always", ("image",), True),
        ("never", ("a", "b", "c"), False),
    ],
)
def test_content_check_modes(mode, views, rejects):
    raw = layer_stack(part=False)[: len(views)]
    problem = frame_problem(raw, FilterConfig(content_check=mode), views=views)
    assert (problem is not None and problem[0] == "no_content") == rejects


def test_blank_and_saturation_thresholds_configurable():
    raw = layer_stack()
    raw[0, :4] = 65535  # 6 % clipped in view a
    assert frame_problem(raw, FilterConfig())[0] == "saturated"
    assert frame_problem(raw, FilterConfig(max_saturated_fraction=0.1)) is None
    assert frame_problem(raw, FilterConfig(max_saturated_fraction=0.1, min_dynamic_range=0.9))[
        0
    ] == ("blank")


@pytest.mark.parametrize("frac", [0.005, 0.02, 0.2])
def test_part_fraction_tracks_part_area(frac):
    rng = np.random.default_rng(3)
    bed = powder(rng, 128)
    assert part_fraction(u16(bed), FilterConfig()) < 0.002
    found = part_fraction(u16(with_part(bed, frac)), FilterConfig())
    assert 0.5 * frac < found < 3 * frac


# --------------------------------------------------------------------------- truth and types


def _square(y: int, x: int, s: int = 6) -> np.ndarray:
    m = np.zeros((N, N), bool)
    m[y : y + s, x : x + s] = True
    return m


def test_instances_union_excludes_spattering_but_types_keep_it(tmp_path):
    rec = write_triplet(tmp_path, "L1", layer_stack())
    shapes = {"hole": _square(2, 2), "spattering": _square(20, 20, 20), "vertical": _square(30, 30)}
    instances = []
    for i, (kind, m) in enumerate(shapes.items()):
        write_mask(tmp_path / f"L1_PD_{i}_{kind}.png", m)
        instances.append((kind, tmp_path / f"L1_PD_{i}_{kind}.png"))
    layer = load_layer_set(LayerRecord("L1", rec.views, instances=tuple(instances)), CFG)
    np.testing.assert_array_equal(layer.truth, shapes["hole"] | shapes["vertical"])
    assert layer.types.dtype == np.uint8
    assert layer.types[3, 3] == defect_code("hole")
    assert layer.types[22, 22] == defect_code("spattering")
    assert layer.types[32, 32] == defect_code("vertical")  # later instance overwrites spattering
    assert layer.types[50, 5] == 0


def test_defect_free_layer_has_empty_truth(tmp_path):
    rec = write_triplet(tmp_path, "L1", layer_stack())
    layer = load_layer_set(LayerRecord("L1", rec.views, no_defects=True), CFG)
    assert layer.truth.shape == (N, N) and not layer.truth.any()
    assert layer.types.shape == (N, N) and not layer.types.any()


def test_truth_file_with_sibling_types(tmp_path):
    rec = write_triplet(tmp_path / "images", "B1", layer_stack())
    truth = _square(10, 10)
    write_mask(tmp_path / "truth" / "B1.png", truth)
    types = truth.astype(np.uint8) * defect_code("incandescence")
    write_raw_png(tmp_path / "types" / "B1.png", types)
    layer = load_layer_set(LayerRecord("B1", rec.views, truth=tmp_path / "truth" / "B1.png"), CFG)
    np.testing.assert_array_equal(layer.truth, truth)
    np.testing.assert_array_equal(layer.types, types)


def test_truth_file_without_types(tmp_path):
    rec = write_triplet(tmp_path, "B1", layer_stack())
    write_mask(tmp_path / "m" / "B1.png", _square(1, 1))
    layer = load_layer_set(LayerRecord("B1", rec.views, truth=tmp_path / "m" / "B1.png"), CFG)
    assert layer.truth.sum() == 36 and layer.types is None


def _mask_of_size(path: Path) -> None:
    write_mask(path, np.zeros((N // 2, N), bool))


def _types_out_of_range(path: Path) -> None:
    write_mask(path, np.zeros((N, N), bool))
    write_raw_png(path.parent.parent / "types" / path.name, np.full((N, N), 9, np.uint8))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_mask_of_size, "mask is 64x32, image is 64x64"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n broken"), "B1.png: "),
        (_types_out_of_range, f"type code 9 outside 0..{len(DEFECT_TYPES)}"),
    ],
)
def test_bad_truth_masks(tmp_path, make, message):
    rec = write_triplet(tmp_path / "images", "B1", layer_stack())
    path = tmp_path / "truth" / "B1.png"
    path.parent.mkdir()
    make(path)
    err = rejected(LayerRecord("B1", rec.views, truth=path))
    assert err.code == "bad_mask" and message in err.reason


def test_bad_instance_mask(tmp_path):
    rec = write_triplet(tmp_path, "L1", layer_stack())
    path = tmp_path / "L1_PD_01_Hole.png"
    write_mask(path, np.zeros((N, N + 2), bool))
    err = rejected(LayerRecord("L1", rec.views, instances=(("hole", path),)))
    assert err.code == "bad_mask" and str(path) in err.reason


# --------------------------------------------------------------------------- synthetic builds


@pytest.fixture(
    scope="session", params=[(64, 0), (64, 1), (128, 2)], ids=lambda p: f"{p[0]}px-s{p[1]}"
)
def synth_build(request, tmp_path_factory):
    synthetic = pytest.importorskip("pbf_core.data.synthetic")
    size, seed = request.param
    out = tmp_path_factory.mktemp("synth") / "build"
    cfg = SynthConfig(layers=12, size=size, seed=seed, noise_frames=0.4)
    return out, synthetic.generate_build(out, cfg)


EXPECTED_CODE = {
    "layer": None,
    "incomplete": "incomplete",
    "blank": "blank",
    "saturated": "saturated",
    "recoater": "no_content",
}


def test_synthetic_noise_frames_are_exactly_the_rejected_ones(synth_build):
    out, manifest = synth_build
    kinds = {e["id"]: e["kind"] for e in manifest["layers"]}
    assert set(kinds.values()) == set(EXPECTED_CODE)  # every noise kind is exercised
    got = {}
    for rec in discover(out).records:
        try:
            layer = load_layer_set(rec, CFG)
        except FrameRejected as exc:
            got[rec.layer_id] = exc.code
            continue
        got[rec.layer_id] = None
        assert layer.truth is not None and layer.types is not None
        assert layer.raw.dtype == np.uint16 and layer.raw.max() > 255
        np.testing.assert_array_equal(layer.truth, layer.types > 0)
    assert got == {lid: EXPECTED_CODE[k] for lid, k in kinds.items()}


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not AM04.is_dir(), reason="../shared/data/real/am04 not present")
@pytest.mark.parametrize("layer_id", ["Image1", "Image14", "Image34", "NoDefects_Image2"])
def test_real_am04_truth_is_union_of_non_spattering_instances(layer_id):
    (rec,) = [r for r in discover(AM04).records if r.layer_id == layer_id]
    layer = load_layer_set(rec, CFG)
    assert layer.views == ("image",) and layer.raw.dtype == np.uint8
    assert layer.raw.shape == (1, 1024, 1280)
    expected = np.zeros((1024, 1280), bool)
    for kind, path in rec.instances:
        if kind != "spattering":
            expected |= read_mask(path)
    np.testing.assert_array_equal(layer.truth, expected)
    for kind, path in rec.instances:
        assert (layer.types[read_mask(path)] > 0).all(), kind
    if layer_id == "Image14":  # upstream's own union also leaves Spattering out
        union = read_mask(AM04 / "data" / "DefectsMasks" / layer_id / f"{layer_id}_Mask_00.png")
        np.testing.assert_array_equal(layer.truth, union)
        assert any(k == "spattering" for k, _ in rec.instances)
        assert (layer.types == defect_code("spattering")).any()


def _real_images() -> list[Path]:
    found = sorted((AM04 / "data").glob("*Defects/**/*.jpg")) if AM04.is_dir() else []
    return found + (sorted(SUPERAMS.glob("*.png")) if SUPERAMS.is_dir() else [])


def _check_real(images: list[Path]) -> dict[str, str]:
    # content_check="always" is stricter than the default, which skips single images
    cfg = PrepareConfig(filter=FilterConfig(content_check="always"))
    problems = {}
    for path in images:
        try:
            load_layer_set(LayerRecord(path.stem, {"image": path}), cfg)
        except FrameRejected as exc:
            problems[str(path)] = exc.reason
    return problems


@pytest.mark.skipif(not _real_images(), reason="../shared/data/real not present")
def test_no_real_image_is_rejected_sample():
    assert _check_real(_real_images()[::10]) == {}


@pytest.mark.slow
@pytest.mark.skipif(not _real_images(), reason="../shared/data/real not present")
def test_no_real_image_is_rejected():
    images = _real_images()
    assert len(images) == 114
    assert _check_real(images) == {}
