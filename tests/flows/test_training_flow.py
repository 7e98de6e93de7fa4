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
    return load_config(TINY, PipelineConfig)


@pytest.fixture(scope="module")
def summary(prefect_harness, state_dir, tiny) -> dict:
    from flows.training import train_pipeline

    return train_pipeline(tiny)


def test_pipeline_registers_both_variants_and_promotes_the_first(summary):
    from tasks import tracking

    assert summary["decision"]["alias"] == "champion"
    assert summary["champion_version"] == summary["versions"]["int8"]
    mc = tracking.client()
    name = summary["registry"]
    int8 = mc.get_model_version_by_alias(name, "champion")
    fp32 = mc.get_model_version_by_alias(name, "champion-fp32")
    assert (str(int8.version), str(fp32.version)) == (
        summary["versions"]["int8"],
        summary["versions"]["fp32"],
    )
    assert int8.tags["variant"] == "int8" and fp32.tags["variant"] == "fp32"
    assert int8.tags["data_digest"] == summary["dataset"]["digest"]
    assert summary["bento_model"].startswith(f"{name}:")  # packaged for the service


def test_run_has_metrics_artifacts_and_decision(summary):
    from tasks import tracking

    mc = tracking.client()
    run = mc.get_run(summary["run_id"])
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
    assert run.data.tags["pbf.promotion"] == "champion"

    def listing(path: str) -> set[str]:
        return {Path(a.path).name for a in mc.list_artifacts(summary["run_id"], path)}

    assert {"pr_curve.png", "thresholds.md", "evaluation.json", "overlays"} <= listing("evaluation")
    assert {"inference.json", "inference.md"} <= listing("benchmark")
    assert "promotion.json" in listing("")
    assert "label_quality.json" in listing("data")


def test_summary_scores_are_against_truth_and_weak_labels(summary, tiny):
    assert set(summary["scores"]) == {"truth", "weak"}
    for scores in summary["scores"].values():
        assert 0 <= scores["dice"] <= 1 and 0 <= scores["recall"] <= 1
    assert summary["speedup"] and summary["eval_layers"] >= 1
    assert summary["training"]["device"] == "cpu"


def test_run_publishes_prefect_artifacts(summary):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keys = ("pbf-run-summary", "pbf-promotion", "pbf-metrics")
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys)))
        )
    assert {a.key for a in found} == set(keys)
    text = next(a.data for a in found if a.key == "pbf-run-summary")
    assert summary["run_url"] in text and "Promotion" in text


def test_prepare_steps_are_cached_on_unchanged_data(prefect_harness, state_dir, tiny):
    """Re-running the data steps on the same raw bytes and config reuses every prepared layer."""
    from tasks import data

    @flow
    def prepare_only(cfg: PipelineConfig):
        build = data.synthesize(cfg.data.synth, str(state_dir / "cache-check"))
        found = data.discover_layers(build, str(state_dir / "staging"))
        out = state_dir / "cache-check-prepared"
        futures = data.prepare_one.map(
            found["source"].records, found["digests"], unmapped(str(out)), unmapped(cfg.prepare)
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
