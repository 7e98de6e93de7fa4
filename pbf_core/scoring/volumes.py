"""3D defects: 2D components that overlap in consecutive layers joined into one flaw.

A pore column or a lack-of-fusion region shows up in many layers; an engineer counts it once.
:class:`DefectJoiner` takes the layers of a build in z order, each as its 8-connected component
label image, and joins two components of consecutive layers when they share at least one pixel
(union-find, so a defect that splits or merges stays one). It keeps only the previous layer's
label image, so memory does not grow with the build.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Component:
    """One predicted 2D component of a layer (bbox end-exclusive, area in px)."""

    layer: str
    z: int
    label: int
    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    max_prob: float
    cx: float
    cy: float


@dataclass
class Defect:
    """A 3D defect: the components joined into it and what they span."""

    id: int
    z_min: int
    z_max: int
    layers: int
    voxels: int  # px × layers: the sum of its components' areas
    x0: int
    y0: int
    x1: int
    y1: int
    max_prob: float

    def to_dict(self) -> dict:
        return asdict(self)


def overlapping_labels(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """``(n, 2)`` distinct pairs ``(previous label, current label)`` sharing a pixel (both > 0)."""
    if previous.shape != current.shape:
        raise ValueError(f"layers of different sizes: {previous.shape} and {current.shape}")
    both = (previous > 0) & (current > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    return np.unique(np.stack([previous[both], current[both]], axis=1).astype(np.int64), axis=0)


@dataclass
class DefectJoiner:
    """Joins the components of consecutive layers into 3D defects (feed layers in z order)."""

    components: list[Component] = field(default_factory=list)
    _parent: list[int] = field(default_factory=list)
    _previous: tuple[np.ndarray, dict[int, int]] | None = None

    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i

    def add(self, labels: np.ndarray | None, components: list[Component]) -> None:
        """The next layer: its label image and components. None for a frame that was not
        usable (a blank, partial or repeated shot): it is skipped, so the layers on either side
        of it join as neighbours."""
        if labels is None:
            return
        index: dict[int, int] = {}
        for c in components:
            index[c.label] = len(self.components)
            self.components.append(c)
            self._parent.append(index[c.label])
        if self._previous is not None and self._previous[0].shape == labels.shape:
            before, prev_index = self._previous
            for a, b in overlapping_labels(before, labels):
                ra, rb = self._find(prev_index[int(a)]), self._find(index[int(b)])
                self._parent[max(ra, rb)] = min(ra, rb)
        self._previous = (labels, index)

    def defect_ids(self) -> list[int]:
        """Each component's defect id (0, 1, ... in order of first appearance)."""
        roots, ids = {}, []
        for i in range(len(self.components)):
            ids.append(roots.setdefault(self._find(i), len(roots)))
        return ids

    def defects(self) -> list[Defect]:
        """The 3D defects, by id."""
        out: dict[int, Defect] = {}
        layers: dict[int, set[int]] = {}
        for c, d in zip(self.components, self.defect_ids(), strict=True):
            e = out.setdefault(d, Defect(d, c.z, c.z, 0, 0, c.x0, c.y0, c.x1, c.y1, c.max_prob))
            layers.setdefault(d, set()).add(c.z)
            e.z_min, e.z_max = min(e.z_min, c.z), max(e.z_max, c.z)
            e.x0, e.y0 = min(e.x0, c.x0), min(e.y0, c.y0)
            e.x1, e.y1 = max(e.x1, c.x1), max(e.y1, c.y1)
            e.voxels += c.area
            e.max_prob = max(e.max_prob, c.max_prob)
        for d, e in out.items():
            e.layers = len(layers[d])
        return [out[d] for d in sorted(out)]


def layer_components(
    layer: str, z: int, mask: np.ndarray, prob: np.ndarray
) -> tuple[np.ndarray, list[Component]]:
    """A layer's 8-connected label image and its components (bbox, area, centroid, peak)."""
    import cv2

    from pbf_core.deploy.overlays import label_peaks

    n, labels, stats, centroids = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    peak = label_peaks(labels, prob, n)
    comps = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        cx, cy = (float(v) for v in centroids[k])
        comps.append(Component(layer, z, k, x, y, x + w, y + h, area, float(peak[k]), cx, cy))
    return labels, comps
