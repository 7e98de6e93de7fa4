"""3D defects: components of consecutive layers joined when they share pixels."""

from __future__ import annotations

import numpy as np
import pytest

from pbf_core.scoring.volumes import DefectJoiner, layer_components, overlapping_labels


def _mask(*boxes, size=32):
    m = np.zeros((size, size), bool)
    for y0, x0, y1, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def _feed(joiner, z, mask):
    labels, comps = layer_components(f"L{z}", z, mask, mask.astype(np.float32) * (0.5 + z / 100))
    joiner.add(labels, comps)


def test_a_pore_column_through_five_layers_is_one_defect():
    joiner = DefectJoiner()
    for z in range(5):
        _feed(joiner, z, _mask((4, 4, 7, 7), (20, 20, 22, 22) if z == 2 else (0, 0, 0, 0)))
    (column, speck) = joiner.defects()
    assert (column.z_min, column.z_max, column.layers, column.voxels) == (0, 4, 5, 45)
    assert (column.x0, column.y0, column.x1, column.y1) == (4, 4, 7, 7)
    assert column.max_prob == pytest.approx(0.54)
    assert (speck.layers, speck.voxels) == (1, 4)
    assert joiner.defect_ids() == [0, 0, 0, 1, 0, 0]  # layer 2: the column, then the speck


def test_branches_that_merge_stay_one_defect_and_distant_ones_stay_apart():
    joiner = DefectJoiner()
    _feed(joiner, 0, _mask((2, 2, 5, 5), (2, 10, 5, 13), (25, 25, 28, 28)))
    _feed(joiner, 1, _mask((3, 3, 4, 12)))  # a bar touching both left blobs
    defects = joiner.defects()
    assert [d.layers for d in defects] == [2, 1]
    assert defects[0].voxels == 9 + 9 + 9 and defects[1].voxels == 9


def test_an_unusable_frame_between_two_layers_does_not_split_a_defect():
    joiner = DefectJoiner()
    _feed(joiner, 0, _mask((4, 4, 7, 7)))
    joiner.add(None, [])  # a blank or partial shot between the layers
    _feed(joiner, 2, _mask((4, 4, 7, 7)))
    _feed(joiner, 3, _mask())  # a layer without the defect ends it
    _feed(joiner, 4, _mask((4, 4, 7, 7)))
    assert [(d.z_min, d.z_max, d.layers) for d in joiner.defects()] == [(0, 2, 2), (4, 4, 1)]


def test_layers_of_another_size_are_never_joined():
    joiner = DefectJoiner()
    _feed(joiner, 0, _mask((4, 4, 7, 7)))
    labels, comps = layer_components("big", 1, _mask((4, 4, 7, 7), size=48), np.ones((48, 48)))
    joiner.add(labels, comps)
    assert len(joiner.defects()) == 2
    with pytest.raises(ValueError, match="different sizes"):
        overlapping_labels(np.zeros((4, 4), int), np.zeros((5, 5), int))


def test_an_empty_build_has_no_defects():
    joiner = DefectJoiner()
    _feed(joiner, 0, _mask())
    assert joiner.defects() == [] and joiner.defect_ids() == []


def test_synthetic_3d_defects_continue_through_layers_and_join_back():
    """The generator's 3D defects are slices with one id in consecutive layers; joining the true
    masks' components gives each of them back as one 3D defect."""
    from pbf_core.config import SynthConfig
    from pbf_core.data.synthetic import render_layer
    from pbf_core.data.synthetic.volumes import plan_volumes

    plain = SynthConfig(layers=16, size=128, seed=3, noise_frames=0)
    cfg = plain.model_copy(update={"volume_defects": 40.0})
    volumes = plan_volumes(cfg)
    assert volumes and plan_volumes(plain) == ()
    joiner, slices = DefectJoiner(), {}
    for z in range(cfg.layers):
        layer, before = render_layer(cfg, z), render_layer(plain, z)
        assert [d for d in layer.defects if d.volume is None] == list(before.defects)
        for d in layer.defects:
            if d.volume is not None:
                slices.setdefault(d.volume, []).append((z, d.bbox))
        labels, comps = layer_components(f"L{z}", z, layer.truth, layer.truth.astype(np.float32))
        joiner.add(labels, comps)
    joined = joiner.defects()
    for v in volumes:
        zs = [z for z, _ in slices.get(v.id, [])]
        assert zs == list(range(v.z0, v.z1))  # one slice in every layer it spans
        x0, y0 = slices[v.id][0][1][:2]
        match = [d for d in joined if d.z_min <= v.z0 and d.z_max >= v.z1 - 1
                 and d.x0 <= x0 < d.x1 and d.y0 <= y0 < d.y1]  # fmt: skip
        assert len(match) == 1, v
