"""Recognising raw layouts: triplets, zips, images+masks, am04, synthetic builds; bad inputs."""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from pbf_core.data import archives
from pbf_core.data.archives import DownloadError, download_kaggle
from pbf_core.data.imaging import write_raw_png
from pbf_core.data.ingest import discover, natural_key
from pbf_core.errors import DatasetError, PbfError

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
AM04 = SHARED / "data" / "real" / "am04"


def _img(path: Path, value: int = 1000, size: int = 8) -> Path:
    """A tiny image: 16-bit PNG/TIFF, 8-bit JPEG (whatever the extension suggests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        assert cv2.imwrite(str(path), np.full((size, size), value % 256, np.uint8))
    elif path.suffix.lower() == ".png":
        write_raw_png(path, np.full((size, size), value, np.uint16))
    else:
        assert cv2.imwrite(str(path), np.full((size, size), value, np.uint16))
    return path


def _triplet(root: Path, lid: str, views: str = "abc", ext: str = ".PNG") -> None:
    for v in views:
        _img(root / f"{lid}{v}{ext}")


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- Kaggle triplets


def test_triplets_grouped_in_natural_order_with_missing_views(tmp_path):
    images = tmp_path / "images"
    _triplet(images, "B10")
    _triplet(images, "B2", ext=".png")
    _triplet(images, "B1", views="ab")  # view c dropped by the camera
    src = discover(tmp_path)
    assert src.format == "kaggle"
    assert src.root == tmp_path
    assert [r.layer_id for r in src.records] == ["B1", "B2", "B10"]
    b1 = src.records[0]
    assert list(b1.views) == ["a", "b", "c"]
    assert b1.views["c"] is None
    assert b1.views["a"] == images / "B1a.PNG"
    assert all(r.truth is None and not r.has_truth for r in src.records)
    assert src.unmatched == []


@pytest.mark.parametrize("ext", [".PNG", ".png", ".tif", ".TIFF", ".jpg"])
def test_triplet_extensions_case_insensitive(tmp_path, ext):
    _triplet(tmp_path / "deep" / "er", "L0001", ext=ext)
    (rec,) = discover(tmp_path).records
    assert rec.layer_id == "L0001"
    assert all(p is not None and p.suffix == ext for p in rec.views.values())


def test_triplet_stray_files_are_unmatched_with_reasons(tmp_path):
    _triplet(tmp_path / "images", "B0001")
    _img(tmp_path / "images" / "overview.png")
    _img(tmp_path / "images" / "B0001d.png")
    (tmp_path / "images" / "B0001a.png.bak").write_text("x")
    (tmp_path / "notes.txt").write_text("hello")
    _img(tmp_path / "other" / "B0001a.png")  # same layer and view twice
    src = discover(tmp_path)
    assert [r.layer_id for r in src.records] == ["B0001"]
    reasons = dict(src.unmatched)
    assert reasons["notes.txt"] == "not an image file"
    assert reasons["images/B0001a.png.bak"] == "not an image file"
    assert "name is not <id><a|b|c>" in reasons["images/overview.png"]
    assert "name is not <id><a|b|c>" in reasons["images/B0001d.png"]
    assert "duplicate view a of B0001" in reasons["other/B0001a.png"]


def test_hidden_and_macos_metadata_files_ignored(tmp_path):
    _triplet(tmp_path, "B1")
    _img(tmp_path / "__MACOSX" / "B2a.png")
    _img(tmp_path / ".B3a.png")
    src = discover(tmp_path)
    assert [r.layer_id for r in src.records] == ["B1"]
    assert src.unmatched == []


def test_triplet_truth_directory_attaches_masks(tmp_path):
    _triplet(tmp_path / "images", "B1")
    _triplet(tmp_path / "images", "B2")
    _img(tmp_path / "truth" / "B1.png", value=0)
    _img(tmp_path / "truth" / "B9.png", value=0)
    src = discover(tmp_path)
    assert src.format == "kaggle"
    assert src.records[0].truth == tmp_path / "truth" / "B1.png"
    assert src.records[1].truth is None
    assert dict(src.unmatched) == {"truth/B9.png": "true mask without layer images (or duplicate)"}


# --------------------------------------------------------------------------- synthetic builds


def _synthetic_tree(root: Path, generator: str = "pbf-synth") -> None:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"generator": generator, "layers": []}))
    _triplet(root / "images", "B0001")
    _triplet(root / "images", "B0002")  # a noise frame: no truth
    _img(root / "truth" / "B0001.png", value=0)
    _img(root / "types" / "B0001.png", value=0)


def test_synthetic_build_records_with_truth(tmp_path):
    _synthetic_tree(tmp_path)
    src = discover(tmp_path)
    assert src.format == "synthetic"
    assert [r.layer_id for r in src.records] == ["B0001", "B0002"]
    assert src.records[0].truth == tmp_path / "truth" / "B0001.png"
    assert src.records[1].truth is None
    assert src.unmatched == []  # manifest and types/ belong to the layout


@pytest.mark.parametrize("manifest", ['{"generator": "other"}', "not json", "[1, 2]"])
def test_manifest_of_another_kind_falls_back_to_triplets(tmp_path, manifest):
    _synthetic_tree(tmp_path)
    (tmp_path / "manifest.json").write_text(manifest)
    src = discover(tmp_path)
    assert src.format == "kaggle"
    assert ("manifest.json", "not an image file") in src.unmatched


def test_generated_synthetic_build_is_recognised(tmp_path):
    synthetic = pytest.importorskip("pbf_core.data.synthetic")
    from pbf_core.config import SynthConfig

    manifest = synthetic.generate_build(
        tmp_path / "b", SynthConfig(layers=8, size=32, seed=3, noise_frames=0.5)
    )
    src = discover(tmp_path / "b")
    assert src.format == "synthetic"
    assert [r.layer_id for r in src.records] == [e["id"] for e in manifest["layers"]]
    assert src.unmatched == []
    for rec, entry in zip(src.records, manifest["layers"], strict=True):
        assert (rec.truth is not None) == (entry["kind"] == "layer")


# --------------------------------------------------------------------------- am04 layout


def _am04_tree(root: Path) -> Path:
    base = root / "data"
    for n in (2, 10):
        _img(base / "Defects" / f"Image{n}" / f"Image{n}.jpg", value=120)
    masks = base / "DefectsMasks"
    _img(masks / "Image2" / "Image2_PD_01_Hole.png", value=0)
    _img(masks / "Image2" / "Image2_PD_02_Spattering.png", value=0)
    _img(masks / "Image2" / "Image2_PD_10_Incandescence.png", value=0)
    _img(masks / "Image2" / "Image2_Mask_00.png", value=0)  # derived union: ignored
    _img(masks / "Image10" / "Image10_PD_01_Crack.png", value=0)  # unknown type
    _img(masks / "Image10" / "Image10_PD_02_Vertical.png", value=0)
    _img(masks / "Image7" / "Image7_PD_01_Hole.png", value=0)  # no such image
    _img(masks / "Image10" / "Image10_notes.png", value=0)
    _img(base / "NoDefects" / "Image2.jpg", value=120)
    (root / "SOURCE.txt").write_text("where it came from")
    return base


def test_am04_layout_instances_and_defect_free_layers(tmp_path):
    base = _am04_tree(tmp_path)
    src = discover(tmp_path)
    assert src.format == "am04"
    assert [r.layer_id for r in src.records] == ["Image2", "Image10", "NoDefects_Image2"]
    img2, img10, free = src.records
    assert img2.views == {"image": base / "Defects" / "Image2" / "Image2.jpg"}
    assert [k for k, _ in img2.instances] == ["hole", "spattering", "incandescence"]
    assert img2.instances[2][1].name == "Image2_PD_10_Incandescence.png"
    assert [k for k, _ in img10.instances] == ["vertical"]
    assert free.no_defects and free.instances == () and free.has_truth
    reasons = dict(src.unmatched)
    assert reasons["SOURCE.txt"] == "not an image file"
    assert (
        "unknown defect type 'Crack'"
        in reasons["data/DefectsMasks/Image10/Image10_PD_01_Crack.png"]
    )
    assert "without image Image7" in reasons["data/DefectsMasks/Image7/Image7_PD_01_Hole.png"]
    assert "mask name" in reasons["data/DefectsMasks/Image10/Image10_notes.png"]
    assert not any("Mask_00" in f for f, _ in src.unmatched)


def test_am04_found_from_its_own_directory(tmp_path):
    base = _am04_tree(tmp_path)
    src = discover(base)
    assert src.format == "am04" and src.root == base and len(src.records) == 3


@pytest.mark.skipif(not AM04.is_dir(), reason="../shared/data/real/am04 not present")
def test_real_am04_tree():
    src = discover(AM04)
    assert src.format == "am04"
    assert len(src.records) == 54
    assert sum(r.no_defects for r in src.records) == 8
    assert sum(len(r.instances) for r in src.records) == 202  # 248 masks minus 46 unions
    ids = [r.layer_id for r in src.records]
    assert ids.index("Image2") < ids.index("Image10")
    assert src.unmatched == [("SOURCE.txt", "not an image file")]


# --------------------------------------------------------------------------- images + masks


def test_folder_of_images_with_masks(tmp_path):
    for s in ("x1", "x2", "x10", "x3"):
        _img(tmp_path / "images" / f"{s}.png")
    _img(tmp_path / "masks" / "x1.png", value=0)
    _img(tmp_path / "images" / "x3_mask.png", value=0)
    _img(tmp_path / "masks" / "orphan.png", value=0)
    _img(tmp_path / "images" / "x2.jpg")  # same id again
    (tmp_path / "README").write_text("x")
    src = discover(tmp_path)
    assert src.format == "folder"
    assert [r.layer_id for r in src.records] == ["x1", "x2", "x3", "x10"]
    truth = {r.layer_id: r.truth for r in src.records}
    assert truth == {
        "x1": tmp_path / "masks" / "x1.png",
        "x2": None,
        "x3": tmp_path / "images" / "x3_mask.png",
        "x10": None,
    }
    assert all(list(r.views) == ["image"] for r in src.records)
    reasons = dict(src.unmatched)
    assert reasons["masks/orphan.png"] == "mask without an image"
    assert reasons["README"] == "not an image file"
    # natural order of paths: x2.jpg is listed before x2.png, so the .png is the duplicate
    assert reasons["images/x2.png"] == "duplicate layer id x2"


def test_flat_folder_of_images(tmp_path):
    _img(tmp_path / "SI_012000.png")
    _img(tmp_path / "SI_012000_mask.png", value=0)
    _img(tmp_path / "sub" / "ignored.png")
    src = discover(tmp_path)
    assert src.format == "folder"
    (rec,) = src.records
    assert rec.layer_id == "SI_012000" and rec.truth == tmp_path / "SI_012000_mask.png"
    assert dict(src.unmatched) == {"sub/ignored.png": "image outside ./"}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda r: (_synthetic_tree(r), _am04_tree(r)), "synthetic"),
        (lambda r: (_am04_tree(r), _triplet(r / "extra", "B1")), "am04"),
        (lambda r: (_triplet(r / "images", "B1"), _img(r / "images" / "plain.png")), "kaggle"),
    ],
)
def test_layout_precedence(tmp_path, make, expected):
    make(tmp_path)
    assert discover(tmp_path).format == expected


# --------------------------------------------------------------------------- zip archives


def _zip_of(src_dir: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src_dir.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src_dir).as_posix())
    return archive


def test_zip_extracted_to_staging_never_next_to_raw(tmp_path):
    raw = tmp_path / "raw"
    _triplet(raw / "src" / "images", "B1")
    _triplet(raw / "src" / "images", "B2", views="ac")
    archive = _zip_of(raw / "src", raw / "layers.zip")
    before = _tree_digest(raw)
    staging = tmp_path / "staging"
    src = discover(archive, staging_dir=staging)
    assert src.format == "kaggle"
    assert [r.layer_id for r in src.records] == ["B1", "B2"]
    assert staging in src.root.parents
    assert src.records[0].views["a"].read_bytes() == (raw / "src/images/B1a.PNG").read_bytes()
    assert _tree_digest(raw) == before  # nothing written beside or into the raw data


def test_zip_with_one_top_folder_is_unwrapped(tmp_path):
    _synthetic_tree(tmp_path / "src" / "build")
    archive = _zip_of(tmp_path / "src", tmp_path / "build.zip")
    src = discover(archive, staging_dir=tmp_path / "s")
    assert src.format == "synthetic" and src.root.name == "build"
    assert src.records[0].truth == src.root / "truth" / "B0001.png"


def test_zip_default_staging_is_a_fresh_temp_dir(tmp_path):
    _triplet(tmp_path / "src", "B1")
    archive = _zip_of(tmp_path / "src", tmp_path / "a.zip")
    first, second = discover(archive).root, discover(archive).root
    assert first != second
    assert tmp_path not in first.parents


def test_zip_of_nothing_usable_names_the_archive(tmp_path):
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("notes.txt", "x")
    with pytest.raises(DatasetError, match=r"notes\.zip: archive content: no recognised raw"):
        discover(archive, staging_dir=tmp_path / "s")
    assert list((tmp_path / "s").iterdir()) == []  # the failed extraction is cleaned up


def test_zip_slip_member_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/B1a.png", b"x")
        zf.writestr("../../escaped.png", b"x")
    staging = tmp_path / "staging"
    with pytest.raises(DatasetError, match=r"unsafe member path '../../escaped.png'"):
        discover(archive, staging_dir=staging)
    assert not (tmp_path / "escaped.png").exists()
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("name", ["/etc/abs.png", "C:/win.png", "a\\..\\..\\b.png"])
def test_zip_absolute_or_climbing_names_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(DatasetError, match="unsafe member path"):
        discover(archive, staging_dir=tmp_path / "s")


def test_zip_symlink_member_refused(tmp_path):
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("images/B1a.png")
    info.external_attr = (0o120777 << 16) | 0
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetError, match="symbolic link"):
        discover(archive, staging_dir=tmp_path / "s")


def test_zip_bomb_ratio_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images/B1a.png", bytes(4 * 1024**2))  # 4 MiB of zeros: ~1000x
    with pytest.raises(DatasetError, match=r"expands \d+x .*zip bomb"):
        discover(archive, staging_dir=tmp_path / "s")


def test_zip_total_size_limit(tmp_path, monkeypatch):
    _triplet(tmp_path / "src", "B1")
    archive = _zip_of(tmp_path / "src", tmp_path / "a.zip")
    monkeypatch.setattr(archives, "MAX_UNZIPPED_BYTES", 100)
    with pytest.raises(DatasetError, match=r"GiB .*zip bomb"):
        discover(archive, staging_dir=tmp_path / "s")


def test_corrupt_zip_is_a_dataset_error(tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DatasetError, match=r"broken\.zip: cannot extract archive"):
        discover(archive, staging_dir=tmp_path / "s")


# --------------------------------------------------------------------------- bad paths


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match=r"nope: not found"):
        discover(tmp_path / "nope")


def test_empty_directory(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty directory"):
        discover(tmp_path / "empty")


def test_unrecognised_folder_names_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    _img(tmp_path / "a" / "b" / "deep.png")
    with pytest.raises(DatasetError) as err:
        discover(tmp_path)
    assert err.value.path == str(tmp_path)
    for hint in ("pbf-synth", "Defects/", "<id>a/b/c", "images/"):
        assert hint in str(err.value)


def test_plain_file_is_refused(tmp_path):
    path = tmp_path / "layer.png"
    _img(path)
    with pytest.raises(DatasetError, match=r"not a directory or a \.zip archive"):
        discover(path)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["Image10", "Image2", "Image1"], ["Image1", "Image2", "Image10"]),
        (["B0010", "B0002", "b0003"], ["B0002", "b0003", "B0010"]),
        (["x2_10", "x2_9", "x10_1"], ["x2_9", "x2_10", "x10_1"]),
        (["NoDefects_Image2", "Image30"], ["Image30", "NoDefects_Image2"]),
    ],
)
def test_natural_key(names, expected):
    assert sorted(names, key=natural_key) == expected


# --------------------------------------------------------------------------- Kaggle download


def test_download_without_kagglehub_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import now raises ImportError
    with pytest.raises(DownloadError, match=r"pip install 'pbf-defects\[kaggle\]'") as err:
        download_kaggle(tmp_path)
    assert isinstance(err.value, PbfError)
    assert list(tmp_path.iterdir()) == []
