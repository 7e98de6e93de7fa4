"""The whole pipeline on tiny data under ``prefect_test_harness``, with the local tracking store."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow, unmapped

from pbf_core.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny() -> PipelineConfig:
    """The tiny preset, split stratified by defect type (what broke `pbf run` once)."""
    cfg = load_config(TINY, PipelineConfig)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"stratify": True})})


@pytest.fixture(scope="module")
def summary(prefect_harness, state_dir, tiny):
    from flows.training import train_pipeline

    return train_pipeline(tiny)


def test_pipeline_registers_both_variants_and_promotes_the_first(summary):
    from tasks.tracking.store import client

    assert summary.decision.alias == "champion"
    assert summary.champion_version == summary.versions.int8
    mc = client()
    name = summary.registry
    int8 = mc.get_model_version_by_alias(name, "champion")
    fp32 = mc.get_model_version_by_alias(name, "champion-fp32")
    assert (str(int8.version), str(fp32.version)) == (summary.versions.int8, summary.versions.fp32)
    assert int8.tags["variant"] == "int8" and fp32.tags["variant"] == "fp32"
    assert int8.tags["data_digest"] == summary.dataset.digest
    assert summary.bento_model.startswith(f"{name}:")  # packaged for the service


def test_int8_file_carries_its_matched_threshold_and_the_gate(summary, state_dir):
    from pbf_core.deploy.metadata import read_metadata

    onnx = state_dir / "runs" / summary.run.run_id / "onnx"
    int8 = read_metadata(onnx / "model.int8.onnx")
    assert int8["reference_threshold"] == read_metadata(onnx / "model.fp32.onnx")["threshold"]
    assert 0 < int8["threshold"] < 1  # QuantizeConfig.match_threshold is on by default
    assert int8["parity"]["passed"] == summary.parity.passed


def test_run_has_metrics_artifacts_and_decision(summary):
    from tasks.tracking.store import client

    mc = client()
    run = mc.get_run(summary.run.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for key in (
        "test/truth/dice",
        "test/weak/dice",
        "test/truth/instance_recall",
        "epoch/train_loss",
    ):
        assert key in metrics, key
    assert any(k.startswith("system/") for k in metrics)
    assert any(k.startswith("bench/onnx-int8/speedup_") for k in metrics)
    assert "parity/onnx-int8/agreement_dice" in metrics
    held_out = summary.held_out  # the tiny preset's 2 layers of the held-out style
    assert (held_out.style, held_out.layers) == ("foundry", 2)
    assert metrics["held_out/foundry/dice"] == pytest.approx(held_out.scores["dice"])
    assert run.data.tags["pbf.promotion"] == "champion"

    def listing(path: str) -> set[str]:
        return {Path(a.path).name for a in mc.list_artifacts(summary.run.run_id, path)}

    assert {"pr_curve.png", "thresholds.md", "evaluation.json", "overlays"} <= listing("evaluation")
    assert {"inference.json", "inference.md"} <= listing("benchmark")
    assert "promotion.json" in listing("")
    assert {"label_quality.json", "split.json"} <= listing("data")


def test_summary_scores_are_against_truth_and_weak_labels(summary, tiny):
    assert summary.dataset.split.stratified and summary.dataset.split.labels == "weak"
    assert set(summary.scores) == {"truth", "weak"}
    for scores in summary.scores.values():
        assert 0 <= scores["dice"] <= 1 and 0 <= scores["recall"] <= 1
    assert summary.speedup and summary.dataset.split.eval_ids
    assert summary.training["device"] == "cpu"


def test_run_publishes_prefect_artifacts(summary):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keys = ("pbf-run-summary", "pbf-promotion", "pbf-metrics")
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys)))
        )
    assert {a.key for a in found} == set(keys)
    # other runs of this test session publish under the same keys: find this run's
    texts = [a.data for a in found if a.key == "pbf-run-summary" and summary.run.url in a.data]
    assert len(texts) == 1 and "Promotion" in texts[0]


def test_prepare_steps_are_cached_on_unchanged_data(prefect_harness, state_dir, tiny, monkeypatch):
    """Re-running the data steps on the same raw bytes and config reuses every prepared layer."""
    from tasks import data

    @flow
    def prepare_only(cfg: PipelineConfig):
        build = data.synthesize(cfg.data.synth, str(state_dir / "cache-check"))
        found = data.discover_layers(build, str(state_dir / "staging"))
        out = state_dir / "cache-check-prepared"
        futures = data.prepare_layer.map(
            found.source.records, list(found.digests), unmapped(str(out)), unmapped(cfg.prepare)
        )
        futures.wait()
        return [f.state.name for f in futures]

    first = prepare_only(tiny)
    second = prepare_only(tiny)
    assert set(first) == {"Completed"}
    assert set(second) == {"Cached"}
    changed = tiny.model_copy(
        update={"prepare": tiny.prepare.model_copy(update={"normalization": "minmax"})}
    )
    assert set(prepare_only(changed)) == {"Completed"}
    # a change to the preparation code (here: its digest) prepares every layer again
    monkeypatch.setattr("tasks.data.preparation_code", lambda: "changed labelling code")
    assert set(prepare_only(tiny)) == {"Completed"}


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_per_layer_map_runs_on_the_configured_task_runner(
    prefect_harness, state_dir, tiny, synthetic_build, kind
):
    """The same layers come out of a thread pool and a process pool (cached results aside)."""
    from flows.training import prepare_layers, task_runner
    from pbf_core.config import RunnerConfig
    from pbf_core.data.prepare import discover_layers

    found = discover_layers(synthetic_build, state_dir / f"staging-{kind}")
    runner = task_runner(RunnerConfig(kind=kind, workers=2))
    assert (
        type(runner).__name__
        == {"threads": "ThreadPoolTaskRunner", "processes": "ProcessPoolTaskRunner"}[kind]
    )
    out = str(state_dir / f"runner-{kind}")
    outcomes = prepare_layers.with_options(task_runner=runner)(found, out, tiny.prepare)
    assert [o.layer_id for o in outcomes] == [r.layer_id for r in found.source.records]
    kept = [o for o in outcomes if o.entry is not None]
    assert kept and all((Path(out) / o.entry.image).is_file() for o in kept)


def test_robustness_benchmark_logs_to_the_run_it_scores(summary, state_dir, tmp_path):
    import json
    import subprocess
    import sys

    from tasks.tracking.store import client

    args = ["--run", summary.run.run_id, "--layers", "1", "--size", "96", "--styles", "foundry",
            "--corruptions", "jpeg", "--weak", "adaptive", "--out", str(tmp_path)]  # fmt: skip
    script = REPO / "benchmarks" / "robustness.py"
    subprocess.run([sys.executable, str(script), *args], check=True, cwd=REPO, timeout=600)
    result = json.loads((tmp_path / "robustness.json").read_text())
    assert {r["method"] for r in result["rows"]} == {"model-fp32", "model-int8", "weak-adaptive"}
    metrics = client().get_run(summary.run.run_id).data.metrics
    fp32 = next(r for r in result["rows"] if r["method"] == "model-fp32")
    assert metrics["robustness/model-fp32/clean/dice"] == pytest.approx(fp32["dice"])
    assert "robustness/model-int8/style/foundry/false_components" in metrics
    assert "robustness/weak-adaptive/jpeg/relative_dice_s1_3" in metrics
    listed = {Path(a.path).name for a in client().list_artifacts(summary.run.run_id, "robustness")}
    assert listed == {"robustness.json", "robustness.md"}


def test_adapt_flow_fine_tunes_the_champion_and_logs_the_verdict(
    summary, state_dir, tiny, tmp_path
):
    """The adapt-model flow on a tiny build of the held-out family: the champion's checkpoint
    by default, its own MLflow run with the gate's numbers, the adapted model as an artifact."""
    from flows.adaptation import adapt_model
    from pbf_core.config import SynthConfig
    from pbf_core.data.synthetic import generate_build
    from tasks.tracking.store import client

    raw = tmp_path / "printer"
    generate_build(raw, SynthConfig(layers=8, size=96, seed=11, style="foundry", noise_frames=0))
    report = adapt_model(str(raw), config=tiny)
    champion = state_dir / "runs" / summary.run.run_id / "model" / "model.safetensors"
    assert report["source"] == str(champion)
    run = client().get_run(report["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_id != summary.run.run_id
    metrics = run.data.metrics
    assert metrics["adapt/accepted"] == float(report["accepted"])
    assert metrics["adapt/after/truth/dice"] == pytest.approx(
        report["after"]["truth"]["pixel"]["dice"]
    )
    assert "adapt/guard/before/dice" in metrics and "adapt/pseudo/defect" in metrics
    listed = {Path(a.path).name for a in client().list_artifacts(report["run_id"], "adaptation")}
    assert {"adaptation.json", "model.safetensors", "split.json"} <= listed
