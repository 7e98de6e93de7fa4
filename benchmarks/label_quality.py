"""Weak-label quality of every label method on a synthetic build and on the real am04 images.

Usage::

    python benchmarks/label_quality.py --synthetic-layers 40 --size 512 --seed 0 \\
        --am04 ../shared/data/real/am04 --out benchmarks/results

``--normalization`` picks the stretch of each view (default ``percentile``; ``make run``
prepares with ``bed``); labels keep to the powder bed (``labels.bed_only``) unless
``--everywhere``. Writes ``NAME.json`` (per data set and labeller: micro-averaged quality, detection per
defect type, per-layer counts, time per layer) and ``NAME.md`` (the tables; ``--name``, default ``label_quality``) under
``--out``. Truth for am04 is the union of its per-instance masks except Spattering (drawn as
coarse regions, see its SOURCE.txt); its NoDefects images have empty truth. Per-type detection
counts annotated instances (am04: one mask file each; synthetic: connected components of each
type in ``types/``) that the weak label touches, Spattering included.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pbf_core.config import LabelConfig, SynthConfig
from pbf_core.data import imaging
from pbf_core.data.labels import METHODS, synthesize_labels
from pbf_core.data.layers import DEFECT_TYPES, TRIPLET_VIEWS
from pbf_core.evaluation.metrics import instance_counts, instance_metrics
from pbf_core.files import write_json

_AM04_INSTANCE = re.compile(r"_PD_\d+_(?P<kind>[A-Za-z]+)\.png$")

#: The prototype rule with the threshold as first configured (0.2), before it was tuned.
PROTOTYPE_THRESHOLD = 0.2


@dataclass
class Layer:
    """One evaluation layer: ``(C, H, W)`` float32 image, ``(H, W)`` bool truth, instances."""

    layer_id: str
    image: np.ndarray
    truth: np.ndarray
    instances: list[tuple[str, np.ndarray]]  # (defect type, (H, W) bool mask)
    bed: np.ndarray  # (H, W) bool powder bed, found on the views as stored


def _type_instances(types: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Connected components (8-connectivity) of each defect type code in a type map."""
    out = []
    for code, kind in enumerate(DEFECT_TYPES, start=1):
        n, labels = cv2.connectedComponents((types == code).astype(np.uint8), connectivity=8)
        out.extend((kind, labels == i) for i in range(1, n))
    return out


def _layer(lid: str, raw: np.ndarray, stretch: str, truth=None, instances=()) -> Layer:
    """A layer from its ``(C, H, W)`` views as stored: each stretched, the bed found on them."""
    image, box = imaging.normalize_views(raw, stretch)
    truth = np.zeros(raw.shape[1:], dtype=bool) if truth is None else truth
    return Layer(lid, image, truth, list(instances), imaging.box_mask(raw.shape[1:], box))


def synthetic_layers(root: Path, stretch: str = "percentile") -> Iterator[Layer]:
    """Layers of a synthetic build, noise frames skipped, each view normalised by ``stretch``."""
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["layers"]:
        if entry.get("kind", "layer") != "layer":
            continue
        lid = entry["id"]
        raw = np.stack(
            [imaging.read_image(root / "images" / f"{lid}{v}.PNG") for v in TRIPLET_VIEWS]
        )
        types = imaging.read_raw_labels(root / "types" / f"{lid}.png")
        truth = imaging.read_mask(root / "truth" / f"{lid}.png")
        yield _layer(lid, raw, stretch, truth, _type_instances(types))


def am04_layers(root: Path, stretch: str = "percentile") -> Iterator[Layer]:
    """am04 layers: 46 with defects (truth = instances except Spattering), 8 defect-free."""
    data = root / "data"
    for img in sorted((data / "Defects").glob("*/*.jpg")):
        gray = imaging.to_gray(imaging.read_image(img))
        truth = np.zeros(gray.shape, dtype=bool)
        instances = []
        for path in sorted((data / "DefectsMasks" / img.stem).glob("*_PD_*.png")):
            match = _AM04_INSTANCE.search(path.name)
            if match is None:
                continue
            kind, mask = match["kind"].lower(), imaging.read_mask(path)
            instances.append((kind, mask))
            if kind != "spattering":
                truth |= mask
        yield _layer(img.stem, gray[None], stretch, truth, instances)
    for img in sorted((data / "NoDefects").glob("*.jpg")):
        gray = imaging.to_gray(imaging.read_image(img))
        yield _layer(f"NoDefects/{img.stem}", gray[None], stretch)


def labellers(cfg: LabelConfig) -> dict[str, LabelConfig]:
    """Row name → label config: every method with its defaults, plus the untuned rule."""
    rows = {name: cfg.model_copy(update={"method": name}) for name in METHODS}
    untuned = cfg.threshold.model_copy(update={"threshold": PROTOTYPE_THRESHOLD})
    rows[f"threshold (untuned, t={PROTOTYPE_THRESHOLD})"] = cfg.model_copy(
        update={"method": "threshold", "threshold": untuned}
    )
    return rows


def evaluate(layers: Iterator[Layer], rows: dict[str, LabelConfig]) -> dict:
    """Every labeller on every layer: summary, per-type detection, per-layer counts, ms/layer."""
    per_layer: dict[str, list[dict]] = {name: [] for name in rows}
    times: dict[str, list[float]] = {name: [] for name in rows}
    by_type = {name: {k: [0, 0, 0, 0] for k in DEFECT_TYPES} for name in rows}
    for layer in layers:
        for name, cfg in rows.items():
            t0 = time.perf_counter()
            pred = synthesize_labels(layer.image, cfg, layer.bed)
            times[name].append((time.perf_counter() - t0) * 1e3)
            per_layer[name].append({"id": layer.layer_id, **instance_counts(pred, layer.truth)})
            for kind, mask in layer.instances:
                hit = pred & mask
                counts = by_type[name][kind]
                counts[0] += 1
                counts[1] += bool(hit.any())
                counts[2] += int(mask.sum())
                counts[3] += int(hit.sum())
    return {
        name: {
            "summary": instance_metrics(per_layer[name]),
            "by_type": {
                kind: {
                    "instances": n,
                    "detected": d,
                    "instance_recall": d / n if n else None,
                    "pixel_recall": tp / px if px else None,
                }
                for kind, (n, d, px, tp) in by_type[name].items()
            },
            "median_ms_per_layer": statistics.median(times[name]) if times[name] else 0.0,
            "config": {
                "bed_only": cfg.bed_only,
                **getattr(cfg, cfg.method).model_dump(),
            },
            "layers": per_layer[name],
        }
        for name, cfg in rows.items()
    }


def markdown(results: dict[str, dict[str, dict]]) -> str:
    """A quality table (one row per data set and labeller) and a per-type detection table."""
    cols = ("precision", "recall", "iou", "dice", "instance_recall", "false_positives_per_image")
    lines = [
        "| data set | labeller | layers | " + " | ".join(cols) + " | ms/layer |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: |",
    ]
    for dataset, rows in results.items():
        for name, res in rows.items():
            s = res["summary"]
            vals = " | ".join(f"{s[c]:.3f}" for c in cols)
            lines.append(
                f"| {dataset} | {name} | {s['layers']} | {vals} | {res['median_ms_per_layer']:.0f} |"
            )
    lines += [
        "",
        "Annotated instances touched by the weak label (detected/total), per defect type:",
        "",
        "| data set | labeller | " + " | ".join(DEFECT_TYPES) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in DEFECT_TYPES) + " |",
    ]
    for dataset, rows in results.items():
        for name, res in rows.items():
            cells = [
                f"{t['detected']}/{t['instances']}" if t["instances"] else "-"
                for t in (res["by_type"][k] for k in DEFECT_TYPES)
            ]
            lines.append(f"| {dataset} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-layers", type=int, default=40, help="0 = skip synthetic")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic-dir", type=Path, help="reuse this build instead of generating")
    parser.add_argument("--am04", type=Path, help="am04 root (with data/ and SOURCE.txt)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--normalization", choices=["percentile", "bed", "bed_flatfield"], default="percentile"
    )
    parser.add_argument(
        "--everywhere", action="store_true", help="label outside the powder bed too"
    )
    parser.add_argument("--name", default="label_quality", help="result file stem")
    args = parser.parse_args()

    rows = labellers(LabelConfig(bed_only=not args.everywhere))
    stretch = args.normalization
    results: dict[str, dict[str, dict]] = {}
    if args.synthetic_layers > 0:
        with tempfile.TemporaryDirectory() as tmp:
            build = args.synthetic_dir
            if build is None:
                from pbf_core.data.synthetic import generate_build

                build = Path(tmp) / "build"
                generate_build(
                    build,
                    SynthConfig(layers=args.synthetic_layers, size=args.size, seed=args.seed),
                )
            key = f"synthetic ({args.synthetic_layers} layers, {args.size}px, seed {args.seed})"
            results[key] = evaluate(synthetic_layers(build, stretch), rows)
    if args.am04 is not None:
        key = "am04 (46 Defects + 8 NoDefects, C=1)"
        results[key] = evaluate(am04_layers(args.am04, stretch), rows)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"normalization": stretch, "bed_only": not args.everywhere}
    write_json(args.out / f"{args.name}.json", {"settings": meta, **results})
    table = f"Stretch `{stretch}`, labels inside the bed only: {not args.everywhere}.\n\n"
    table += markdown(results)
    (args.out / f"{args.name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
