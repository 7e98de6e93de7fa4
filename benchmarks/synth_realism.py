"""How close synthetic builds are to real PBF layers: defect sizes, intensities, parts.

Usage::

    python benchmarks/synth_realism.py --out benchmarks/results [--layers 40 --size 512 --seed 0]
        [--real ../shared/data/real] [--build DIR]

Generates a build (into ``--build`` or a temporary directory) and compares it with

- ``am04`` (hand-drawn per-instance defect masks on 8-bit 1280x1024 chamber photos): defect
  instance area as a fraction of the image per type, defect area per image (union of instances
  except Spattering, which am04 draws as coarse regions around droplet clouds), defect contrast
  (mean inside / mean of a 5 px ring around) and the percentile-normalised intensity histogram;
- ``superams`` (750x750 8-bit after-exposure layers with part masks): intensity histogram,
  part area fraction and part/powder brightness ratio, powder texture (median coefficient of
  variation over 16x16 powder tiles).

Histograms are compared by the 1-D Wasserstein (earth mover's) distance between intensity
distributions normalised per image to [0, 1] by the 0.5/99.5 percentiles; the distance between the
two real data sets is reported as the scale of "as different as two real machines".

Writes ``synth_realism.json`` and ``synth_realism.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from pbf_core.config import SynthConfig
from pbf_core.data import imaging
from pbf_core.data.layers import DEFECT_TYPES
from pbf_core.data.synthetic import generate_build, render_layer
from pbf_core.files import write_json

_BINS = 100
_AM04_INSTANCE = re.compile(r"_PD_\d+_(?P<kind>[A-Za-z]+)\.png$")
_RING = np.ones((11, 11), np.uint8)  # 5 px ring around a defect


def histogram(img: np.ndarray) -> np.ndarray:
    """Intensity distribution of an image normalised to [0, 1] by percentiles: ``(_BINS,)`` sums to 1."""
    x = imaging.normalize(imaging.to_gray(img), "percentile")
    h, _ = np.histogram(x, bins=_BINS, range=(0.0, 1.0))
    return h / h.sum()


def wasserstein(p: np.ndarray, q: np.ndarray) -> float:
    """1-D earth mover's distance between two histograms on [0, 1] (units: normalised intensity)."""
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() / _BINS)


def stats(values: Iterable[float]) -> dict:
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    p50, p90 = np.percentile(v, [50, 90])
    return {"n": int(v.size), "median": p50, "p90": p90, "max": float(v.max())}


def contrast(img: np.ndarray, own: np.ndarray, other: np.ndarray) -> float | None:
    """Mean intensity inside ``own`` / mean of a 5 px ring around it (excluding ``other`` defects)."""
    ys, xs = np.nonzero(own)
    y0, y1 = max(0, ys.min() - 6), min(own.shape[0], ys.max() + 7)
    x0, x1 = max(0, xs.min() - 6), min(own.shape[1], xs.max() + 7)
    o = own[y0:y1, x0:x1]
    ring = (cv2.dilate(o.astype(np.uint8), _RING) > 0) & ~o & ~other[y0:y1, x0:x1]
    crop = img[y0:y1, x0:x1].astype(np.float64)
    if not ring.any():
        return None
    return float(crop[o].mean() / max(crop[ring].mean(), 1e-6))


def measure_synthetic(build: Path) -> dict:
    manifest = json.loads((build / "manifest.json").read_text())
    cfg = SynthConfig(**manifest["config"])
    n_px = cfg.size * cfg.size
    by_type: dict[str, list[float]] = defaultdict(list)
    contrasts: dict[str, list[float]] = defaultdict(list)
    per_image, part_frac, part_ratio, powder_cv, hists = [], [], [], [], []
    for entry in manifest["layers"]:
        if entry["kind"] != "layer":
            continue
        for d in entry["defects"]:
            by_type[d["type"]].append(100 * d["area"] / n_px)
        per_image.append(
            100 * sum(d["area"] for d in entry["defects"] if d["type"] != "spattering") / n_px
        )
        part_frac.append(100 * entry["part_fraction"])
        view_a = imaging.read_image(build / "images" / f"{entry['id']}a.PNG")
        hists.append(histogram(view_a))
        layer = render_layer(cfg, entry["z"])  # the part mask is not on disk
        part = layer.part_mask
        part_ratio.append(float(np.median(view_a[part]) / np.median(view_a[~part])))
        powder_cv.append(tile_cv(view_a, ~part & ~layer.truth))
        for d in layer.defects:
            x0, y0, x1, y1 = d.bbox
            own = np.zeros_like(layer.truth)
            own[y0:y1, x0:x1] = layer.types[y0:y1, x0:x1] == DEFECT_TYPES.index(d.type) + 1
            c = contrast(view_a, own, layer.truth)
            if c is not None:
                contrasts[d.type].append(c)
    return {
        "config": manifest["config"],
        "frames": len(manifest["layers"]),
        "instance_area_pct": {t: stats(v) for t, v in sorted(by_type.items())},
        "instance_area_pct_no_spatter": stats(
            a for t, v in by_type.items() if t != "spattering" for a in v
        ),
        "image_defect_area_pct": stats(per_image),
        "contrast": {t: stats(v) for t, v in sorted(contrasts.items())},
        "part_area_pct": stats(part_frac),
        "part_powder_ratio": stats(part_ratio),
        "powder_cv": stats(powder_cv),
        "histogram": np.mean(hists, axis=0),
    }


def tile_cv(img: np.ndarray, powder: np.ndarray, tile: int = 16) -> float:
    """Median std/mean over ``tile``² tiles that are all powder: grain texture plus sensor noise."""
    h, w = img.shape
    cvs = []
    for y in range(0, h - tile + 1, tile):
        for x in range(0, w - tile + 1, tile):
            if powder[y : y + tile, x : x + tile].all():
                t = img[y : y + tile, x : x + tile].astype(np.float64)
                cvs.append(t.std() / max(t.mean(), 1e-6))
    return float(np.median(cvs)) if cvs else float("nan")


def measure_am04(root: Path) -> dict:
    data = root / "data"
    by_type: dict[str, list[float]] = defaultdict(list)
    contrasts: dict[str, list[float]] = defaultdict(list)
    per_image, hists, powder_cv = [], [], []
    for img_path in sorted((data / "Defects").glob("*/*.jpg")):
        img = imaging.to_gray(imaging.read_image(img_path))
        hists.append(histogram(img))
        masks = []
        for mask_path in sorted((data / "DefectsMasks" / img_path.stem).glob("*_PD_*.png")):
            match = _AM04_INSTANCE.search(mask_path.name)
            if match:
                masks.append((match["kind"].lower(), imaging.read_mask(mask_path)))
        union = np.zeros(img.shape, dtype=bool)
        for kind, m in masks:
            by_type[kind].append(100 * m.mean())
            if kind != "spattering":
                union |= m
        per_image.append(100 * union.mean())
        # The photos show the whole chamber; the central half is build plate.
        h, w = img.shape
        near = cv2.dilate(union.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        plate = np.zeros_like(union)
        plate[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
        powder_cv.append(tile_cv(img, plate & ~near))
        for kind, m in masks:
            if m.any() and kind != "spattering":
                c = contrast(img, m, union & ~m)
                if c is not None:
                    contrasts[kind].append(c)
    for img_path in sorted((data / "NoDefects").glob("*.jpg")):
        hists.append(histogram(imaging.read_image(img_path)))
        per_image.append(0.0)
    return {
        "images": len(hists),
        "instance_area_pct": {t: stats(v) for t, v in sorted(by_type.items())},
        "instance_area_pct_no_spatter": stats(
            a for t, v in by_type.items() if t != "spattering" for a in v
        ),
        "image_defect_area_pct": stats(per_image),
        "contrast": {t: stats(v) for t, v in sorted(contrasts.items())},
        "powder_cv": stats(powder_cv),
        "histogram": np.mean(hists, axis=0),
    }


def measure_superams(root: Path) -> dict:
    hists, part_frac, part_ratio, powder_cv = [], [], [], []
    for job in sorted((root / "Job_Images").glob("*.png")):
        img = imaging.to_gray(imaging.read_image(job))
        part = imaging.read_mask(root / "Reference_Images" / job.name)
        hists.append(histogram(img))
        part_frac.append(100 * part.mean())
        part_ratio.append(float(np.median(img[part]) / np.median(img[~part])))
        # Margin around the nominal part: the masks are nominal, melt spreads a few px beyond.
        near = cv2.dilate(part.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        powder_cv.append(tile_cv(img, ~near))
    return {
        "images": len(hists),
        "part_area_pct": stats(part_frac),
        "part_powder_ratio": stats(part_ratio),
        "powder_cv": stats(powder_cv),
        "histogram": np.mean(hists, axis=0),
    }


def _fmt(s: dict, key: str = "median") -> str:
    if not s or s.get("n", 0) == 0:
        return "–"
    v = s[key]
    return f"{v:.3g}"


def _row(name: str, syn: dict, real: dict, keys=("median", "p90", "max")) -> str:
    cells = " / ".join(_fmt(syn, k) for k in keys)
    rcells = " / ".join(_fmt(real, k) for k in keys)
    return f"| {name} | {cells} (n={syn.get('n', 0)}) | {rcells} (n={real.get('n', 0)}) |"


def markdown(result: dict) -> str:
    syn, am, sa = result["synthetic"], result.get("am04"), result.get("superams")
    cfg = syn["config"]
    lines = [
        "# Synthetic build vs real PBF layers",
        "",
        f"Synthetic: {cfg['layers']} layers, {cfg['size']} px, seed {cfg['seed']}, "
        f"generated in {result['generate_s']:.2f} s ({result['generate_s_per_frame'] * 1000:.0f} ms"
        f" per frame incl. PNG writing, {syn['frames']} frames).",
        "",
    ]
    if am:
        lines += [
            "## Defects (vs am04 hand-drawn masks, 46 + 8 images)",
            "",
            "Area in % of the image, median / p90 / max. am04 draws Spattering as coarse regions"
            " around droplet clouds, the generator as droplet pixels, so spatter is left out of the"
            " totals.",
            "",
            "| quantity | synthetic | am04 |",
            "| --- | --- | --- |",
            _row(
                "instance area, all but spatter",
                syn["instance_area_pct_no_spatter"],
                am["instance_area_pct_no_spatter"],
            ),
            _row(
                "defect area per image (union, no spatter)",
                syn["image_defect_area_pct"],
                am["image_defect_area_pct"],
            ),
        ]
        for t in DEFECT_TYPES:
            lines.append(
                _row(
                    f"instance area: {t}",
                    syn["instance_area_pct"].get(t, {}),
                    am["instance_area_pct"].get(t, {}),
                )
            )
        for t in DEFECT_TYPES:
            lines.append(
                _row(
                    f"contrast inside/ring: {t}",
                    syn["contrast"].get(t, {}),
                    am["contrast"].get(t, {}),
                    keys=("median", "p90"),
                )
            )
        lines.append("")
    if sa:
        lines += [
            "## Parts and powder (vs superams after-exposure layers, 60 images)",
            "",
            "| quantity | synthetic | superams |",
            "| --- | --- | --- |",
            _row("part area %", syn["part_area_pct"], sa["part_area_pct"]),
            _row(
                "part / powder median brightness", syn["part_powder_ratio"], sa["part_powder_ratio"]
            ),
            _row("powder texture (CV of 16 px tiles)", syn["powder_cv"], sa["powder_cv"]),
            "",
        ]
        if am:
            lines += [
                "am04 powder texture (central half of the chamber photo, away from defects):"
                f" {_fmt(am['powder_cv'])} median, {_fmt(am['powder_cv'], 'p90')} p90.",
                "",
            ]
    lines += [
        "## Intensity histograms",
        "",
        "Wasserstein-1 distance between mean intensity distributions, each image normalised to"
        " [0, 1] by its 0.5/99.5 percentiles (0 = identical, 1 = opposite ends).",
        "",
        "| pair | W1 |",
        "| --- | --- |",
    ]
    lines += [f"| {pair} | {d:.3f} |" for pair, d in result["histogram_w1"].items()]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    cfg = SynthConfig(layers=args.layers, size=args.size, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(args.build) if args.build else Path(tmp) / "build"
        t0 = time.perf_counter()
        manifest = generate_build(build, cfg)
        elapsed = time.perf_counter() - t0
        result: dict = {
            "generate_s": elapsed,
            "generate_s_per_frame": elapsed / len(manifest["layers"]),
            "synthetic": measure_synthetic(build),
        }
    real = Path(args.real)
    if (real / "am04").is_dir():
        result["am04"] = measure_am04(real / "am04")
    if (real / "superams").is_dir():
        result["superams"] = measure_superams(real / "superams")
    hists = {k: result[k]["histogram"] for k in ("synthetic", "am04", "superams") if k in result}
    pairs = [("synthetic", "am04"), ("synthetic", "superams"), ("am04", "superams")]
    result["histogram_w1"] = {
        f"{a} vs {b}": wasserstein(hists[a], hists[b])
        for a, b in pairs
        if a in hists and b in hists
    }
    for k in hists:
        result[k]["histogram"] = [round(float(v), 6) for v in result[k]["histogram"]]
    return result


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(repo / "benchmarks" / "results"))
    p.add_argument("--layers", type=int, default=40)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", default=str(repo.parent / "shared" / "data" / "real"))
    p.add_argument("--build", default=None, help="keep the generated build here (default: temp)")
    args = p.parse_args(argv)
    result = run(args)
    out = Path(args.out)
    write_json(out / "synth_realism.json", result)
    md = markdown(result)
    (out / "synth_realism.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
