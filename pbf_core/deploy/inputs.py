"""Raw layer images → the network's normalised ``(C, H, W)`` input, as ``pbf prepare`` does it.

The model's spec says which views, in which order, and how each is normalised; nothing here is
a model constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pbf_core.data.imaging import bed_mask, box_mask, normalize_views, stack_layers, to_gray
from pbf_core.model.spec import ModelSpec


def prepare_input(raw: np.ndarray | Mapping[str, np.ndarray], spec: ModelSpec) -> np.ndarray:
    """Turn a raw layer into the network's ``(C, H, W)`` float32 input, as ``pbf prepare`` does.

    Args:
        raw: one of
            - a mapping view name → ``(H, W[, 3])`` uint8/uint16 image, with every view in
              ``spec.views`` (e.g. ``{"a": …, "b": …, "c": …}``);
            - an ``(H, W)`` or ``(H, W, 3|4)`` uint8/uint16 image for a single-view model
              (colour is averaged to grey);
            - an ``(H, W, 3|4)`` uint8/uint16 image whose R, G, B channels are the three views
              of a triplet model (how prepared datasets store them);
            - ``(C, H, W)`` uint8/uint16 raw views in ``spec.views`` order;
            - ``(C, H, W)`` float32 in [0, 1], already normalised (e.g. a prepared layer).
        spec: views, normalisation and percentiles of the model.

    Raises:
        ValueError: missing views, or a shape/channel count the model cannot take.
    """
    return normalized_views(stored_views(raw, spec), spec)


def normalized_views(views: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The network's input from :func:`stored_views`' output (float views are only clipped)."""
    return _normalized(views, spec, find_bed=False)[0]


def model_input(views: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """The network's input from :func:`stored_views`' output, and the powder bed to keep to.

    Returns:
        ``(x, bed)``: the input as :func:`normalized_views` makes it; ``(H, W)`` bool bed for
        a ``bed_only`` model given stored (integer) views, found with the stretch's own bed
        regions (each view's once, see :func:`~pbf_core.data.imaging.normalize_views`), else
        None (:func:`keep_to_bed` then keeps what it keeps without one).
    """
    return _normalized(views, spec, find_bed=spec.bed_only)


def _normalized(
    views: np.ndarray, spec: ModelSpec, find_bed: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    if np.issubdtype(views.dtype, np.floating):
        return np.clip(views, 0.0, 1.0).astype(np.float32, copy=False), None
    lo, hi = spec.percentiles
    x, box = normalize_views(views, spec.normalization, lo, hi, find_bed=find_bed)
    return x, None if box is None else box_mask(views.shape[1:], box)


def stored_views(raw: np.ndarray | Mapping[str, np.ndarray], spec: ModelSpec) -> np.ndarray:
    """``(C, H, W)`` views of a layer in ``spec.views`` order, as stored (float when ``raw`` is
    already normalised); ``raw`` as in :func:`prepare_input`.

    Raises:
        ValueError: missing views, or a shape/channel count the model cannot take.
    """
    c = spec.in_channels
    if isinstance(raw, Mapping):
        missing = [v for v in spec.views if v not in raw]
        if missing:
            raise ValueError(f"missing view(s) {', '.join(missing)}; the model needs {spec.views}")
        return stack_layers({v: raw[v] for v in spec.views}, layer_id="input")
    arr = np.asarray(raw)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.ndim == 2 and c == 1:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] != c:
            raise ValueError(f"normalised input must be ({c}, H, W), got shape {arr.shape}")
        return arr
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.shape[0] != c and c == 3:
        # an RGB file whose channels are the views, as prepared datasets store triplets
        return np.moveaxis(arr[:, :, :3], 2, 0)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.shape[0] != c):
        if c != 1:
            raise ValueError(
                f"the model takes {c} views {spec.views}; pass them as a mapping, "
                f"({c}, H, W) or an RGB image of the views, got shape {arr.shape}"
            )
        return to_gray(arr)[None]
    if arr.ndim == 3 and arr.shape[0] == c:
        return arr
    raise ValueError(f"cannot read input of shape {arr.shape} for {c} channel(s)")


def keep_to_bed(
    prob: np.ndarray, views: np.ndarray, spec: ModelSpec, bed: np.ndarray | None = None
) -> np.ndarray:
    """``prob`` with what lies outside the powder bed set to 0 when ``spec.bed_only``.

    The bed is ``bed`` (``(H, W)`` bool) when given, else :func:`~pbf_core.data.imaging.bed_mask`
    of ``views`` (:func:`stored_views`' output). Already normalised views without ``bed`` keep
    the whole picture: the bed is found on the views before their stretch (see ``bed_box``),
    and a prepared dataset keeps it in its manifest (``Sample.bed``).
    """
    if not spec.bed_only:
        return prob
    if bed is None:
        if np.issubdtype(views.dtype, np.floating):
            return prob
        bed = bed_mask(views)
    return np.where(bed, prob, np.float32(0)).astype(prob.dtype, copy=False)


def group_layer_files(paths: list[Path], views: tuple[str, ...]) -> list[tuple[str, dict]]:
    """Group input files into layers: ``(name, {view: path})`` in input order.

    For a multi-view model, files whose stem ends in a view name (``B0001a.png``,
    ``B0001b.png``, ``B0001c.png``) form one layer named by the common prefix, once every view
    is present; any other file is one layer on its own (``{"": path}``: a single-view image, or
    an RGB image of the views).

    Raises:
        ValueError: a triplet with missing views.
    """
    groups: dict[str, dict] = {}
    for p in paths:
        stem = p.stem
        if len(views) > 1 and len(stem) > 1 and stem[-1].lower() in views:
            groups.setdefault(stem[:-1], {})[stem[-1].lower()] = p
        else:
            groups[stem] = {"": p}
    for name, found in groups.items():
        if "" not in found and set(found) != set(views):
            missing = sorted(set(views) - set(found))
            raise ValueError(f"layer {name}: missing view file(s) {', '.join(missing)}")
    return list(groups.items())
