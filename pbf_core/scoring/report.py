"""The build report: one self-contained, accessible HTML page and its numbers as JSON.

``report.html`` needs nothing but itself (styles inline, images as ``data:`` URIs, no script):
the verdict, defect area per layer (a chart and the table of its numbers), a top-down heat map
of how many layers have a defect at each pixel (z projection), a side view (x against z), the
largest 3D defects and the worst layers with their overlays. ``report.json`` holds the same
numbers for dashboards.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from pbf_core.data.imaging import read_mask
from pbf_core.files import write_json
from pbf_core.scoring.layers import ScoredLayer


def data_uri(rgb: np.ndarray) -> str:
    """A PNG ``data:`` URI of an ``(H, W, 3)`` uint8 RGB or ``(H, W)`` uint8 image."""
    bgr = rgb[:, :, ::-1] if rgb.ndim == 3 else rgb
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ValueError("could not encode a report image")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def projections(out: Path, layers: list[ScoredLayer]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per pixel, how many layers have a defect there (``(H, W)``), and the side view
    (``(layers, W)``: a defect anywhere along y at that x); layers of the most common size only."""
    usable = [s.score for s in layers if s.score.usable]
    if not usable:
        return None
    (h, w), _ = Counter((s.height, s.width) for s in usable).most_common(1)[0]
    top, side = np.zeros((h, w), np.int32), []
    for s in usable:
        if (s.height, s.width) != (h, w):
            continue
        mask = read_mask(out / "masks" / f"{s.layer}.png")
        top += mask
        side.append(mask.any(axis=0))
    return top, np.array(side, bool)


def heat_map(counts: np.ndarray) -> np.ndarray:
    """Counts as an RGB heat map (inferno; black = never a defect)."""
    scaled = np.zeros(counts.shape, np.uint8)
    if counts.max() > 0:
        scaled = np.round(255 * counts / counts.max()).astype(np.uint8)
    return cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO)[:, :, ::-1]


def side_view(side: np.ndarray, height: int = 240) -> np.ndarray:
    """The x-z side view, z upwards (the last layer on top), stretched to a readable height."""
    img = np.where(side[::-1], 255, 40).astype(np.uint8)
    if img.shape[0] == 0:
        return np.zeros((1, 1), np.uint8)
    return cv2.resize(
        img, (img.shape[1], max(height, img.shape[0])), interpolation=cv2.INTER_NEAREST
    )


def area_chart(rows: list[tuple[int, float]], width: int = 640, height: int = 200) -> str:
    """An inline SVG line chart of defect area (%) per layer index (decorative: a table follows)."""
    if not rows:
        return ""
    top = max(max(a for _, a in rows), 1e-6)
    last = max(max(i for i, _ in rows), 1)
    pts = " ".join(
        f"{40 + (width - 50) * i / last:.1f},{height - 25 - (height - 40) * a / top:.1f}"
        for i, a in rows
    )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-labelledby="area-title">'
        f'<title id="area-title">Defect area per layer, 0 to {top:.3f} % (numbers in the table'
        f' below)</title><line x1="40" y1="{height - 25}" x2="{width - 10}" y2="{height - 25}"'
        f' stroke="#333"/><line x1="40" y1="15" x2="40" y2="{height - 25}" stroke="#333"/>'
        f'<polyline fill="none" stroke="#b3261e" stroke-width="2" points="{pts}"/>'
        f'<text x="44" y="14" font-size="12">{top:.3f} %</text>'
        f'<text x="{width - 60}" y="{height - 8}" font-size="12">layer {last}</text></svg>'
    )


def _table(caption: str, head: list[str], rows: list[list[object]]) -> str:
    esc = html.escape
    th = "".join(f'<th scope="col">{esc(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><caption>{esc(caption)}</caption><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem;"
    "color:#1a1a1a;background:#fff;line-height:1.45}table{border-collapse:collapse;margin:.5rem 0"
    " 1.5rem}th,td{border:1px solid #767676;padding:.2rem .5rem;text-align:right}"
    "caption{text-align:left;font-weight:600;padding:.3rem 0}.verdict{font-size:1.2rem;"
    "font-weight:600}img{max-width:100%;height:auto;image-rendering:pixelated}"
)


def _maps_section(maps: tuple[np.ndarray, np.ndarray] | None) -> str:
    if maps is None:
        return "<p>No usable layer: nothing to project.</p>"
    top, side = maps
    most = int(top.max())
    return (
        "<h3>Top-down: in how many layers each pixel is a defect</h3>"
        f'<img src="{data_uri(heat_map(top))}" alt="Heat map of defect frequency seen from above:'
        f' brighter means a defect in more layers, at most {most} layers at one pixel">'
        "<h3>Side view: defects along x, layer by layer (last layer on top)</h3>"
        f'<img src="{data_uri(side_view(side))}" alt="Side view of the build: a white mark where'
        f' a layer has a defect at that x position, {side.shape[0]} layers from bottom to top">'
    )


def _layer_rows(layers: list[ScoredLayer], flagged: set[str]) -> list[list[object]]:
    return [
        [s.score.index, s.score.layer, f"{s.score.area_pct:.4f}", s.score.components,
         "yes" if s.score.layer in flagged else "no"]
        for s in layers if s.score.usable
    ]  # fmt: skip


def _defects_section(summary: dict) -> str:
    rows = [
        [d["id"], d["z_min"], d["z_max"], d["layers"], d["voxels"],
         f"{d['x0']}-{d['x1']} × {d['y0']}-{d['y1']}", f"{d['max_prob']:.3f}"]
        for d in summary["largest_defects"]
    ]  # fmt: skip
    head = ["id", "first layer", "last layer", "layers", "voxels", "x × y (px)", "peak"]
    caption = "Up to 10 largest defects joined through consecutive layers"
    return "<h2>Largest 3D defects</h2>" + _table(caption, head, rows)


def _worst_section(overlays: dict[str, np.ndarray]) -> str:
    esc = html.escape
    figures = "".join(
        f'<h3>Layer {esc(lid)}</h3><img src="{data_uri(img)}" alt="Layer {esc(lid)} with its '
        'defects in red and each region boxed in yellow">'
        for lid, img in overlays.items()
    )
    return "<h2>Worst layers</h2>" + (figures or "<p>No layer has a defect.</p>")


def _unusable_section(summary: dict) -> str:
    rows = [[k, v] for k, v in summary["unusable"].items()]
    if not rows:
        return "<h2>Unusable layers</h2><p>Every layer was usable.</p>"
    return "<h2>Unusable layers</h2>" + _table(
        "Layers the filter refused", ["layer", "reason"], rows
    )


def render_report(result, title: str, overlays: dict[str, np.ndarray]) -> str:
    """The report page of a :class:`~pbf_core.scoring.build.BuildScore`."""
    summary, esc = result.summary(), html.escape
    layers, flagged = list(result.layers), set(result.flagged)
    chart = area_chart([(s.score.index, s.score.area_pct) for s in layers if s.score.usable])
    facts = [
        ["layers", summary["layers"]], ["usable", summary["usable"]],
        ["flagged", len(flagged)], ["3D defects", summary["defects"]],
    ]  # fmt: skip
    head = ["z", "layer", "area %", "components", "flagged"]
    sections = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<style>{STYLE}</style></head><body><main><h1>{esc(title)}</h1>",
        f'<p class="verdict">{esc(summary["verdict"])}</p>',
        _table("The build in numbers", ["what", "count"], facts),
        f"<h2>Defect area per layer</h2>{chart}",
        _table("Defect area per usable layer", head, _layer_rows(layers, flagged)),
        f"<h2>Where the defects are</h2>{_maps_section(projections(result.out, layers))}",
        _defects_section(summary),
        _worst_section(overlays),
        _unusable_section(summary),
        "</main></body></html>",
    ]
    return "".join(sections)


def write_report(result, title: str, overlays: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """``report.html`` and ``report.json`` (summary, area per layer, every 3D defect) in
    ``result.out``."""
    page = result.out / "report.html"
    tmp = page.with_name(".report.html.tmp")
    tmp.write_text(render_report(result, title, overlays), encoding="utf-8")
    tmp.replace(page)
    numbers = {
        "title": title,
        **result.summary(),
        "area_pct": {s.score.layer: s.score.area_pct for s in result.layers if s.score.usable},
        "all_defects": [d.to_dict() for d in result.defects],
    }
    write_json(result.out / "report.json", numbers)
    return page, result.out / "report.json"
