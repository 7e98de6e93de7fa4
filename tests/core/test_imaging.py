"""Reading, normalising and writing layer images: bit depth kept, bad files refused clearly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from pbf_core.data.imaging import (
    bed_box,
    bed_mask,
    bed_region,
    decode_image,
    flat_field,
    integer_percentiles,
    normalize,
    normalize_views,
    read_image,
    read_layer,
    read_mask,
    repair_stuck_pixels,
    stack_layers,
    to_gray,
    write_mask,
    write_png16,
    write_raw_png,
)
from pbf_core.errors import ImageReadError, LayerSetError


@pytest.fixture
def gradient16() -> np.ndarray:
    return (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 20 + 1000).astype(np.uint16)


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff"])
def test_16bit_round_trip_keeps_values_above_255(tmp_path, gradient16, ext):
    path = tmp_path / f"layer{ext}"
    assert cv2.imwrite(str(path), gradient16)
    arr = read_image(path)
    assert arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, gradient16)
    assert arr.max() > 255


def test_8bit_jpeg_reads_as_uint8(tmp_path):
    path = tmp_path / "layer.jpg"
    Image.fromarray(np.full((32, 40), 128, np.uint8)).save(path, quality=95)
    arr = read_image(path)
    assert arr.dtype == np.uint8 and arr.shape == (32, 40)


def test_colour_is_rgb_order(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint16)
    rgb[..., 0] = 60000  # red
    path = tmp_path / "c.png"
    write_png16(path, rgb.transpose(2, 0, 1) / 65535.0)
    arr = read_image(path)
    assert arr.shape == (8, 8, 3) and arr.dtype == np.uint16
    assert arr[0, 0, 0] == 60000 and arr[0, 0, 2] == 0


def _png_bytes(tmp_path) -> bytes:
    path = tmp_path / "ok.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 65535, (64, 64), dtype=np.uint16))
    return path.read_bytes()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d, b: None, "file not found"),
        (lambda d, b: b"", "empty file"),
        (lambda d, b: b"this is not an image at all", "not a recognised image"),
        (lambda d, b: b[: len(b) // 2], "truncated"),
        (lambda d, b: b[:100] + bytes(len(b) - 100), "corrupt"),
    ],
    ids=["missing", "empty", "not-image", "truncated-png", "corrupt-png"],
)
def test_bad_files_raise_typed_error_naming_file(tmp_path, make, reason):
    data = make(tmp_path, _png_bytes(tmp_path))
    path = tmp_path / "bad.png"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg_is_refused(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.zeros((300, 300), np.uint8))
    with pytest.raises(ImageReadError, match="too many pixels"):
        read_image(path, max_pixels=300 * 299)


def test_float_tiff_is_refused_with_bit_depth(tmp_path):
    path = tmp_path / "f.tif"
    cv2.imwrite(str(path), np.zeros((8, 8), np.float32))
    with pytest.raises(ImageReadError, match="bit depth"):
        read_image(path)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


@pytest.mark.parametrize("method", ["percentile", "minmax", "fullscale"])
def test_normalize_uses_16_bit_range(gradient16, method):
    x = normalize(gradient16, method=method)
    assert x.dtype == np.float32 and x.shape == gradient16.shape
    assert x.min() >= 0.0 and x.max() <= 1.0
    # an 8-bit clip would make every pixel above 255 identical; here they stay distinct
    assert len(np.unique(x)) > 1000


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_percentiles_equal_numpy(dtype):
    rng = np.random.default_rng(7)
    top = np.iinfo(dtype).max + 1
    for trial in range(60):
        shape = tuple(int(v) for v in rng.integers(1, 70, size=1 + trial % 3))
        arr = rng.integers(0, top if trial % 2 else 40, size=shape).astype(dtype)
        q = (float(rng.uniform(0, 5)), 50.0, float(rng.uniform(95, 100)))
        expected = np.percentile(arr.astype(np.float32), q)
        assert integer_percentiles(arr, q) == tuple(float(v) for v in expected)
        fixed = repair_stuck_pixels(arr).astype(np.float32)  # normalize repairs them first
        lo, hi = np.percentile(fixed, [q[0], q[2]])
        if hi - lo > 1e-6:  # the histogram path gives the float path's exact output
            ref = np.clip((fixed - np.float32(lo)) / np.float32(hi - lo), 0, 1)
            assert np.array_equal(normalize(arr, "percentile", q[0], q[2]), ref)


def _vignetted_bed(gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A 256² grainy powder bed, 45 % darker in the corners, with one dark 5 px pore."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :256] / 255.0 - 0.5
    light = 1.0 - 0.9 * (xx**2 + yy**2)
    bed = 20_000 * light * (1.0 + 0.03 * rng.standard_normal((256, 256)))
    pore = np.zeros((256, 256), bool)
    pore[40:45, 200:205] = True
    bed[pore] *= 0.5
    return np.clip(bed * gain, 0, 65535).astype(np.uint16), pore


def test_flatfield_evens_out_vignetting_that_the_plain_stretch_keeps():
    bed, pore = _vignetted_bed()
    corner, centre = (slice(0, 32), slice(0, 32)), (slice(112, 144), slice(112, 144))
    ratio = flat_field(bed.astype(np.float32))
    assert bed[corner].mean() / bed[centre].mean() < 0.7
    assert 0.9 < ratio[corner].mean() / ratio[centre].mean() < 1.1
    plain, flat = normalize(bed, "percentile"), normalize(bed, "flatfield")
    assert plain[centre].mean() - plain[corner].mean() > 2 * (flat[centre] - flat[corner]).mean()
    # the pore, far smaller than the background's window, keeps its contrast
    powder = flat[30:55, 190:215][~pore[30:55, 190:215]].mean()
    assert powder - flat[pore].mean() > 0.3


def test_flatfield_ignores_the_camera_gain_and_handles_stacks_and_flat_images():
    bed, _ = _vignetted_bed()
    brighter, _ = _vignetted_bed(gain=2.5)
    a, b = normalize(bed, "flatfield"), normalize(brighter, "flatfield")
    assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0
    assert np.abs(a - b).mean() < 0.01
    stack = np.stack([bed, brighter])
    np.testing.assert_allclose(flat_field(stack.astype(np.float32))[1], flat_field(brighter * 1.0))
    assert not normalize(np.full((40, 30), 900, np.uint16), "flatfield").any()
    assert not normalize(np.zeros((3, 3), np.uint16), "flatfield").any()


@pytest.mark.parametrize("level", [6_000, 32_000])
def test_bed_flatfield_keeps_a_pores_contrast_under_a_light_ramp_and_a_frame(level):
    # a ramp of ±50 % across the plate widens the bed's histogram: the plain bed stretch then
    # squeezes (or swells) a pore's contrast with the ramp; over the smooth background it stays
    bed, _ = _vignetted_bed()
    bed = bed.astype(np.float32)
    pore = np.zeros(bed.shape, bool)
    pore[60:64, 180:184] = True
    bed[pore] *= 0.5
    ring = np.zeros(bed.shape, bool)
    ring[54:70, 174:190] = True
    ring &= ~pore
    framed = _framed(bed, 40, level)
    xx = np.mgrid[:256, :256][1] / 255.0 - 0.5

    def contrast(method: str, slope: float) -> float:
        lit = np.clip(framed * (1 + slope * xx), 0, 65535).astype(np.uint16)
        out = normalize(lit, method)
        return float(out[ring].mean() - out[pore].mean())

    even = contrast("bed_flatfield", 0.0)
    assert even > 0.4  # the frame, dark or bright, neither joins the statistics nor the background
    for slope in (1.0, -1.0):
        assert abs(contrast("bed_flatfield", slope) / even - 1) < 0.15
        assert abs(contrast("bed", slope) / contrast("bed", 0.0) - 1) > 0.4
    assert contrast("flatfield", 0.0) < 0.8 * even  # the frame in the whole view's statistics


def _framed(bed: np.ndarray, width: int, level: float, sides: str = "tblr") -> np.ndarray:
    """``bed`` with a flat machine frame ``width`` px wide on the named sides."""
    out = bed.copy()
    if "t" in sides:
        out[:width] = level
    if "b" in sides:
        out[-width:] = level
    if "l" in sides:
        out[:, :width] = level
    if "r" in sides:
        out[:, -width:] = level
    return out


@pytest.mark.parametrize("width", [37, 40])
@pytest.mark.parametrize(("level", "sides"), [(6_000, "tblr"), (32_000, "tblr"), (7_000, "lr")])
def test_bed_region_leaves_a_machine_frame_out(level, sides, width):
    bed, _ = _vignetted_bed()
    framed = _framed(bed, width, level, sides)
    rows, cols = bed_region(framed.astype(np.float32))
    for cut, side in ((rows.start, "t"), (cols.start, "l")):  # to BED_FINE, not BED_BLOCK
        assert abs(cut - width) <= 1 if side in sides else cut == 0
    assert rows.stop == (256 - rows.start) and cols.stop == (256 - cols.start)
    # the bed is stretched as if the frame were not there
    inner = (slice(64, 192), slice(64, 192))
    plain, alone = normalize(framed, "percentile"), normalize(framed, "bed")
    reference = normalize(np.ascontiguousarray(bed[rows, cols]), "percentile")
    expected = reference[64 - rows.start : 192 - rows.start, 64 - cols.start : 192 - cols.start]
    np.testing.assert_allclose(alone[inner], expected, atol=1e-6)
    np.testing.assert_allclose(normalize(framed.astype(np.float32), "bed"), alone, atol=1e-6)
    assert np.abs(plain[inner] - expected).mean() > 0.05


@pytest.mark.parametrize(("grain", "sides"), [(0.003, "tblr"), (0.15, "tb"), (0.15, "tblr")])
def test_bed_region_finds_a_frame_as_bright_as_the_bed_by_its_texture(grain, sides):
    # the frame's metal reads as bright as the powder beside it (the level test sees no edge)
    # but it is smooth (0.3 %) or rough (15 %) where the powder's grain is 3 %
    rng = np.random.default_rng(11)
    bed, _ = _vignetted_bed()
    yy, xx = np.mgrid[:256, :256] / 255.0 - 0.5
    metal = 20_000 * (1.0 - 0.9 * (xx**2 + yy**2)) * (1 + grain * rng.standard_normal(bed.shape))
    framed = bed.copy()
    frame = ~_framed(np.ones(bed.shape, bool), 43, False, sides)
    framed[frame] = np.clip(metal[frame], 0, 65535).astype(np.uint16)
    rows, cols = bed_region(framed)
    for cut, side in ((rows.start, "t"), (cols.start, "l")):
        assert abs(cut - 43) <= 1 if side in sides else cut == 0  # BED_FINE blocks
    reference = normalize(np.ascontiguousarray(framed[rows, cols]), "percentile")
    np.testing.assert_allclose(normalize(framed, "bed")[rows, cols], reference, atol=1e-6)


def test_bed_mask_is_the_bed_of_every_view():
    bed, _ = _vignetted_bed()
    left, top = _framed(bed, 40, 6_000, "l"), _framed(bed, 40, 6_000, "t")
    mask = bed_mask(np.stack([left, top, bed]).astype(np.float32))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert 40 <= rows[0] <= 56 and 40 <= cols[0] <= 56 and rows[-1] == cols[-1] == 255
    assert mask[rows[0] :, cols[0] :].all() and mask.sum() == mask[rows[0] :, cols[0] :].size
    assert (bed_mask(left) == mask.any(0)[None, :]).all()
    assert bed_mask(np.zeros((2, 40, 50), np.float32)).all()


@pytest.mark.parametrize("method", ["bed", "bed_flatfield", "percentile"])
def test_normalize_views_stretches_as_normalize_and_finds_the_box_as_bed_box(method):
    bed, _ = _vignetted_bed()
    left, top = _framed(bed, 40, 6_000, "l"), _framed(bed, 48, 30_000, "t")
    raw = np.stack([left, top, bed])
    image, box = normalize_views(raw, method, 1.0, 99.0)
    expected = np.stack([normalize(v, method, 1.0, 99.0) for v in raw])
    np.testing.assert_array_equal(image, expected)
    assert box == bed_box(raw) and box[0] > 40 and box[2] > 32
    alone, none = normalize_views(raw, method, 1.0, 99.0, find_bed=False)
    np.testing.assert_array_equal(alone, expected)
    assert none is None


def test_normalize_views_finds_the_bed_past_stuck_pixels():
    # salt in the border band: bed_box of the stored views takes it for a frame's texture and
    # cuts 16 px; the stretch's repaired views show a bed without a frame
    bed, _ = _vignetted_bed()
    salted = bed.copy()
    salted[::9, 3] = 65535
    _, box = normalize_views(np.stack([salted, bed, bed]), "bed")
    assert box == (0, 256, 0, 256)
    assert normalize_views(np.stack([bed] * 3), "bed")[1] == (0, 256, 0, 256)


def test_bed_region_keeps_a_frameless_bed_whole():
    rng = np.random.default_rng(5)
    bed, _ = _vignetted_bed()
    streaks = 1 + 0.03 * np.clip(cv2.GaussianBlur(rng.standard_normal((1, 256)), (0, 0), 3), -3, 3)
    striped = np.clip(bed * streaks, 0, 65535).astype(np.uint16)
    part = striped.copy()
    part[20:120, 20:120] = (part[20:120, 20:120] * 1.8).astype(np.uint16)
    for image in (bed, striped, part, np.zeros((64, 64), np.uint16)):
        h, w = image.shape
        assert bed_region(image.astype(np.float32)) == (slice(0, h), slice(0, w))
        np.testing.assert_array_equal(normalize(image, "bed"), normalize(image, "percentile"))


@pytest.mark.parametrize("col", [20, 40, 200, 236])
def test_a_line_near_the_border_is_not_a_frame(col):
    # a lack-of-fusion line two px wide down most of the bed, 20-56 px from a side: it changes
    # one block of the profile, where a frame changes all of them out to the border
    bed, _ = _vignetted_bed()
    lined = bed.copy()
    lined[20:236, col : col + 2] = (lined[20:236, col : col + 2] * 0.4).astype(np.uint16)
    assert bed_region(lined) == (slice(0, 256), slice(0, 256))
    assert bed_box(np.stack([lined, bed, lined])) == (0, 256, 0, 256)


def test_the_bed_is_found_on_the_views_as_stored():
    # the stretch's offset darkens the vignetted corners towards 0, which multiplies the
    # blocks' spread over their mean there: found on the stretched picture, the line at 40 px
    # would pass for a frame's edge; bed_box documents that it wants the stored values
    bed, _ = _vignetted_bed()
    lined = bed.copy()
    lined[20:236, 40:42] = (lined[20:236, 40:42] * 0.4).astype(np.uint16)
    assert bed_region(normalize(lined, "percentile")) != (slice(0, 256), slice(0, 256))
    assert bed_mask(lined).all()


def test_normalize_constant_is_zero_and_unknown_method_raises():
    assert not normalize(np.full((4, 4), 7, np.uint16)).any()
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize(np.zeros((2, 2), np.uint16), method="gamma")


def test_stack_layers_checks_sizes():
    a = np.zeros((4, 5), np.uint16)
    assert stack_layers({"a": a, "b": a, "c": a}, "B1").shape == (3, 4, 5)
    with pytest.raises(LayerSetError, match=r"B1: image sizes differ \(a=5x4, b=5x4, c=6x4\)"):
        stack_layers({"a": a, "b": a, "c": np.zeros((4, 6), np.uint16)}, "B1")


def test_to_gray_ignores_alpha():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 90
    rgba[..., 3] = 255
    np.testing.assert_array_equal(to_gray(rgba), np.full((2, 2), 90, np.uint8))


def test_layer_and_mask_round_trip(tmp_path):
    img = np.random.default_rng(2).random((3, 16, 20)).astype(np.float32)
    write_png16(tmp_path / "l.png", img)
    back = read_layer(tmp_path / "l.png")
    assert back.shape == (3, 16, 20)
    np.testing.assert_allclose(back, img, atol=1 / 65535)
    mask = img[0] > 0.5
    write_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)


def test_writes_are_atomic_no_temp_files_left(tmp_path):
    write_raw_png(tmp_path / "r.png", np.ones((4, 4), np.uint16) * 300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.png"]
    assert read_image(tmp_path / "r.png").max() == 300
    with pytest.raises(ValueError, match="uint8/uint16"):
        write_raw_png(tmp_path / "x.png", np.ones((4, 4), np.float32))


def test_decode_image_names_the_upload(tmp_path):
    path = tmp_path / "ok.png"
    cv2.imwrite(str(path), np.full((5, 6), 1000, np.uint16))
    assert decode_image(path.read_bytes(), "layer.png").max() == 1000
    with pytest.raises(ImageReadError, match=r"^layer\.png: empty file"):
        decode_image(b"", "layer.png")
    with pytest.raises(ImageReadError, match=r"^up\.jpg: not a recognised"):
        decode_image(b"GIF89a-not-really", "up.jpg")


def _salted(p: float, dtype=np.uint16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A powder-like view, the same with a share ``p`` of its pixels stuck, and where."""
    rng = np.random.default_rng(4)
    top = np.iinfo(dtype).max
    clean = np.clip(0.3 * top + 0.01 * top * rng.standard_normal((300, 400)), 1, top - 1)
    clean = clean.astype(dtype)
    hit = rng.random(clean.shape) < p
    salted = clean.copy()
    salted[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, top)
    return clean, salted, hit


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_lone_stuck_pixels_are_repaired_and_nothing_else_moves(dtype):
    clean, salted, hit = _salted(0.01, dtype)
    repaired = repair_stuck_pixels(salted)
    top = np.iinfo(dtype).max
    assert ((repaired == 0) | (repaired == top)).sum() < 0.1 * hit.sum()  # pairs may stay
    assert np.array_equal(repaired[~hit], salted[~hit])
    assert np.abs(repaired[hit].astype(float) - clean[hit]).mean() < 0.05 * top
    assert repair_stuck_pixels(clean) is clean
    # the stretch no longer follows the stuck pixels: salted ≈ clean after normalising
    stretched = normalize(salted)[~hit]
    assert np.abs(stretched - normalize(clean)[~hit]).mean() < 0.01
    assert np.abs(normalize(salted.astype(np.float32))[~hit] - normalize(clean)[~hit]).mean() > 0.1


def test_stuck_pixels_with_a_neighbour_at_the_same_end_are_kept():
    clean, _, _ = _salted(0.0)
    view = clean.copy()
    view[10:12, 10:12] = 65535  # a saturated spatter of 2 x 2 px
    view[50:, :3] = 0  # a dark strip
    view[100, 100], view[200, 300] = 65535, 0  # a hot and a dead pixel
    repaired = repair_stuck_pixels(np.stack([view, clean]))
    assert (repaired[0, 10:12, 10:12] == 65535).all() and (repaired[0, 50:, :3] == 0).all()
    assert 0 < repaired[0, 100, 100] < 65535 and 0 < repaired[0, 200, 300] < 65535
    assert np.array_equal(repaired[1], clean)
