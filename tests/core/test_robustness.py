"""The robustness scoring: held-out layers, conditions, relative scores."""

from __future__ import annotations

import numpy as np
import pytest

from pbf_core.deploy.inference import Segmenter
from pbf_core.evaluation.robustness import (
    HeldOutLayer,
    held_out_layers,
    model_masks,
    relative_to_clean,
    robustness_scores,
    score_layers,
    weak_label_masks,
)
from pbf_core.model.spec import ModelSpec


@pytest.fixture(scope="module")
def layers() -> list[HeldOutLayer]:
    return held_out_layers("classic", 2, 64, seed=11)


def oracle(layers):
    truths = {layer.views.tobytes(): layer.truth for layer in layers}
    return lambda views: truths.get(views.tobytes(), np.zeros(views.shape[1:], bool))


def test_held_out_layers_have_truth_and_differ_by_style(layers):
    assert len(layers) == 2 and all(layer.truth.any() for layer in layers)
    styled = held_out_layers("foundry", 2, 64, seed=11)
    assert np.array_equal(styled[0].truth, layers[0].truth)  # same defects, other look
    assert not np.array_equal(styled[0].views, layers[0].views)


def test_scores_of_a_perfect_and_an_empty_segmenter(layers):
    perfect = score_layers(oracle(layers), layers)
    assert perfect["dice"] == 1.0 and perfect["instance_recall"] == 1.0
    assert perfect["false_components"] == 0.0
    empty = score_layers(lambda views: np.zeros(views.shape[1:], bool), layers)
    assert empty["recall"] == 0.0 and empty["instance_recall"] == 0.0


def test_every_method_meets_every_condition(layers):
    methods = {"oracle": oracle(layers), "background": weak_label_masks("background")}
    styles = {"foundry": held_out_layers("foundry", 1, 64, seed=12)}
    rows = robustness_scores(methods, layers, ["jpeg", "gain"], styles, severities=(1, 3))
    assert len(rows) == 2 * (1 + 2 * 2 + 1)
    clean = next(r for r in rows if r.method == "oracle" and r.condition == "clean")
    assert clean.dice == 1.0
    jpeg = [r for r in rows if r.method == "oracle" and r.condition == "jpeg"]
    assert all(r.dice < 1.0 for r in jpeg)  # the oracle only knows the clean bytes
    rel = relative_to_clean(rows, max_severity=3)
    expected = np.mean([r.dice for r in jpeg])
    assert rel["oracle"]["jpeg"]["relative_dice"] == pytest.approx(expected)
    assert set(rel["background"]) == {"jpeg", "gain"}


def test_a_model_segments_raw_triplets(layers):
    spec = ModelSpec(tile_size=64, tile_overlap=8, threshold=0.5)
    segmenter = Segmenter(lambda batch: (batch.mean(axis=1) < 0.2).astype(np.float32), spec)
    mask = model_masks(segmenter)(layers[0].views)
    assert mask.shape == layers[0].truth.shape and mask.dtype == bool


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from pbf_core.model.checkpoints import save_checkpoint
    from pbf_core.model.factory import create_model

    torch.manual_seed(0)
    spec = ModelSpec(
        tile_size=64, tile_overlap=8, decoder_channels=(16, 16, 8, 8, 8), threshold=0.3
    )
    model = create_model(decoder_channels=spec.decoder_channels)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", model, spec)


def test_held_out_check_scores_a_model_file_on_the_held_out_style(tiny_checkpoint):
    from pbf_core.config import HeldOutConfig
    from pbf_core.evaluation.held_out import HELD_OUT_KEYS, evaluate_held_out

    cfg = HeldOutConfig(layers=2, size=64, seed=11)
    result = evaluate_held_out(tiny_checkpoint, cfg)
    assert (result.style, result.layers, result.threshold) == ("foundry", 2, 0.3)
    layers = held_out_layers("foundry", 2, 64, seed=11)
    segmenter = Segmenter.from_checkpoint(tiny_checkpoint)
    assert result.scores == score_layers(model_masks(segmenter), layers)
    assert tuple(result.scores) == HELD_OUT_KEYS
    assert set(result.metrics()) == {f"held_out/foundry/{k}" for k in HELD_OUT_KEYS}
    with pytest.raises(ValueError, match="off"):
        evaluate_held_out(tiny_checkpoint, HeldOutConfig(layers=0))


def test_held_out_command_prints_the_scores(tiny_checkpoint):
    import json

    from typer.testing import CliRunner

    from flows.cli import app

    args = ["held-out", str(tiny_checkpoint), "--style", "bright", "--layers", "1", "--size", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{") :])
    assert out["style"] == "bright" and out["layers"] == 1 and 0 <= out["scores"]["dice"] <= 1
    bad = CliRunner().invoke(app, ["held-out", str(tiny_checkpoint), "--style", "nope"])
    assert bad.exit_code == 2 and "style" in bad.output


@pytest.fixture(scope="module")
def bench():
    """``benchmarks/style_factors.py`` as a module (benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "style_factors.py"
    spec = importlib.util.spec_from_file_location("style_factors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_style_factors_benchmark_takes_the_family_apart(bench, tiny_checkpoint, tmp_path):
    import json

    from pbf_core.data.synthetic.styles import STYLES

    before = dict(STYLES["foundry"])
    args = ["--model", str(tiny_checkpoint), "--layers", "1", "--size", "64", "--seed", "11",
            "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(args) == 0
    assert STYLES["foundry"] == before  # the family's own ranges are untouched
    rows = {
        r["variant"]: r for r in json.loads((tmp_path / "style_factors.json").read_text())["rows"]
    }
    assert set(rows) == {"classic", "family"} | {f"{s}{p}" for p in before for s in "+-"}
    masks = model_masks(Segmenter.from_checkpoint(tiny_checkpoint))
    for name, style in (("family", "foundry"), ("classic", "classic")):
        expected = score_layers(masks, held_out_layers(style, 1, 64, seed=11))
        assert {k: rows[name][k] for k in expected} == expected
    # one parameter alone is another look than the whole family, with the same defects
    streaks_only = held_out_layers("foundry", 1, 64, seed=11, ranges={"streaks": before["streaks"]})
    assert not np.array_equal(streaks_only[0].views, held_out_layers("foundry", 1, 64, 11)[0].views)
    assert np.array_equal(streaks_only[0].truth, held_out_layers("classic", 1, 64, 11)[0].truth)
    assert "| +streaks |" in (tmp_path / "style_factors.md").read_text()


def test_style_factor_variants_change_one_parameter_and_keep_the_other_draws(bench):
    from dataclasses import replace

    from pbf_core.config import SynthConfig
    from pbf_core.data.synthetic.styles import CLASSIC, STYLES, draw_look

    cfg = SynthConfig(layers=3, size=64, seed=11, style="foundry")
    family = [draw_look(cfg, z) for z in range(3)]
    variants = bench.variants(STYLES["foundry"])
    for name in ("streaks", "gamma", "salt_pepper"):
        left_out = [draw_look(cfg, z, ranges=variants[f"-{name}"]) for z in range(3)]
        assert left_out == [replace(f, **{name: getattr(CLASSIC, name)}) for f in family]
        alone = [draw_look(cfg, z, ranges=variants[f"+{name}"]) for z in range(3)]
        assert alone == [replace(CLASSIC, **{name: getattr(f, name)}) for f in family]
