"""MLflow tracking (store, runs, registry) against a real local store (SQLite + artifacts in tmp).

The promotion test lives here: a worse candidate is registered but never becomes champion, and
a registry failure midway leaves the aliases as they were.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from pbf_core.config import PipelineConfig, PromotionConfig, Settings
from pbf_core.data.dataset import LayerEntry, Manifest, PreparedDataset
from pbf_core.deploy.metadata import set_metadata, spec_metadata
from pbf_core.deploy.parity import Parity
from pbf_core.deploy.quantization import QuantizedModel
from pbf_core.evaluation.promotion import Scores, decide
from pbf_core.evaluation.scores import Evaluation, LabelScores
from pbf_core.model.spec import ModelSpec
from tasks.tracking import registry, runs
from tasks.tracking.store import client, resolve_store, ui_command

NAME = "pbf-defect-segmenter"


def tiny_onnx(path: Path, gain: float) -> str:
    """A 1x1 convolution ``(N, 1, H, W) -> (N, 1, H, W)``: a stand-in segmenter file whose
    probability is ``sigmoid(gain * x)``, with a spec (threshold 0.6) in its metadata."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [gain])
    dims = ["batch", 1, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    spec = ModelSpec(
        in_channels=1, views=("image",), tile_size=32, tile_overlap=0, threshold=0.6,
        train_data_digest="tiny",
    )  # fmt: skip
    set_metadata(model, spec_metadata(spec, "onnx-fp32"))
    onnx.save_model(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh local tracking store for this module (environment pointed at it)."""
    state = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PBF_STATE_DIR", str(state))
        mp.delenv("PBF_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield resolve_store()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> PreparedDataset:
    root = tmp_path_factory.mktemp("dataset")
    manifest = Manifest(
        source="unit", format="folder", views=("image",), label_method="background",
        normalization="percentile",
        layers=(LayerEntry(id="L1", image="i.png", weak="w.png", truth="t.png", height=8, width=8),),
    )  # fmt: skip
    (root / "manifest.json").write_text(manifest.model_dump_json())
    report = {"label_quality": {"background": {"recall": 0.9}}}
    return PreparedDataset("unit", root, "d" * 64, ("image",), 1, report=report)


def scores(dice: float) -> LabelScores:
    pixel = {"dice": dice, "iou": dice, "precision": dice, "recall": dice}
    instance = {"instance_recall": 1.0, "false_positives_per_image": 0.5, "n_true": 3}
    return LabelScores(1, 0.5, pixel, pixel, instance, dice, dice, 0.5, 0.5)


def parity(variant: str) -> Parity:
    return Parity(variant, "truth", 1, 0.9, 0.9, 0.9, 0.9, 1.0, 1.0, 0.01, 0.01, True)


def register(store, dataset, tmp_path, gain: float):
    run = runs.start_run(PipelineConfig(), dataset)
    quantized = QuantizedModel(
        fp32=Path(tiny_onnx(tmp_path / f"fp32-{gain}.onnx", gain)),
        int8=Path(tiny_onnx(tmp_path / f"int8-{gain}.onnx", gain)),
        checkpoint=tmp_path / "model.safetensors",
        thresholds={"onnx-int8": 0.5},
        threshold_matched_on=None,
        calibration_labels="truth",
        calibration_tiles=(1, 1, 32, 32),
        parity={v: parity(v) for v in ("onnx-fp32", "onnx-int8")},
        report=tmp_path / "quantize.json",
    )
    evaluation = Evaluation(0.5, 1, scores(gain), scores(gain))
    return run, registry.register_variants(run, quantized, dataset, evaluation)


@pytest.fixture
def champion(store, dataset, tmp_path):
    """The store's champion version (one registered and promoted here when there is none)."""
    if registry.champion_summary() is None:
        run, versions = register(store, dataset, tmp_path, gain=0.9)
        first = decide(
            Scores({"truth/dice": 0.9}, "e"), None, PromotionConfig(), parity_passed=True
        )
        registry.apply_decision(run, versions, first)
    return registry.champion_summary()["version"]


def aliases(mc) -> dict[str, str]:
    out = {}
    for alias in ("champion", "champion-fp32", "challenger", "challenger-fp32"):
        with contextlib.suppress(Exception):
            out[alias] = str(mc.get_model_version_by_alias(NAME, alias).version)
    return out


def test_store_defaults_to_sqlite_under_state_dir(store, tmp_path, monkeypatch):
    assert store.uri.startswith("sqlite:///") and store.uri.endswith("mlflow/mlflow.db")
    assert store.artifact_root.startswith("file://")
    # MLflow exports the URI it is given; the same SQLite store must still be recognised as local.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    assert resolve_store() == store
    assert ui_command(store).startswith("mlflow ui --backend-store-uri sqlite:///")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_store().uri == "http://mlflow:5000"
    assert resolve_store().artifact_root is None
    monkeypatch.setenv("PBF_TRACKING_URI", "http://other:5000")
    assert resolve_store().uri == "http://other:5000"


def test_run_holds_config_dataset_and_epoch_metrics(store, dataset):
    run = runs.start_run(PipelineConfig(), dataset)
    log = runs.epoch_logger(run.run_id)
    for epoch in range(3):
        log({"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_dice": 0.1 * epoch})
    runs.finish_run(run.run_id)
    mc = client()
    got = mc.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["train.model.encoder"] == PipelineConfig().train.model.encoder
    assert got.data.params["data.synth.layers"] == str(PipelineConfig().data.synth.layers)
    history = mc.get_metric_history(run.run_id, "epoch/val_dice")
    assert [m.step for m in history] == [0, 1, 2]
    (ds,) = got.inputs.dataset_inputs
    assert ds.dataset.name == "unit" and dataset.digest.startswith(ds.dataset.digest)
    assert mc.get_experiment(got.info.experiment_id).name == "pbf-unit"
    arts = {a.path for a in mc.list_artifacts(run.run_id, "data")}
    assert arts == {"data/prepare_report.json", "data/label_quality.json"}


def test_compare_view_opens_on_the_headline_scores(store, dataset):
    """The scores a user compares on come first in the run's metrics (MLflow's compare page opens
    on the first one that differs), with the evaluation's values, not the placeholders."""
    run = runs.start_run(PipelineConfig(), dataset)
    runs.log_metrics(run.run_id, {"system/cpu_utilization_percentage": 40.0})
    runs.epoch_logger(run.run_id)({"epoch": 0, "train_loss": 1.0})
    evaluation = Evaluation(0.5, 1, scores(0.7), scores(0.6))
    runs.log_metrics(run.run_id, evaluation.metrics())
    metrics = client().get_run(run.run_id).data.metrics
    headline = runs.headline_metrics(dataset)
    assert headline[:2] == ["test/truth/dice", "test/truth/recall"]
    assert list(metrics)[: len(headline)] == headline
    assert metrics["test/truth/dice"] == 0.7 and metrics["test/weak/dice"] == 0.6
    assert not any(np.isnan(metrics[k]) for k in headline)


def test_worse_candidate_does_not_become_champion(store, dataset, tmp_path):
    mc = client()
    run1, v1 = register(store, dataset, tmp_path, gain=0.9)
    first = decide(Scores({"truth/dice": 0.9}, "e"), None, PromotionConfig(), parity_passed=True)
    registry.apply_decision(run1, v1, first)
    assert aliases(mc)["champion"] == v1.int8
    assert aliases(mc)["champion-fp32"] == v1.fp32

    run2, v2 = register(store, dataset, tmp_path, gain=0.5)
    worse = decide(
        Scores({"truth/dice": 0.5}, "e"),
        Scores({"truth/dice": 0.9}, "e", "champion"),
        PromotionConfig(),
        parity_passed=True,
    )
    assert not worse.promote
    registry.apply_decision(run2, v2, worse)
    now = aliases(mc)
    assert now["champion"] == v1.int8 and now["champion-fp32"] == v1.fp32
    assert now["challenger"] == v2.int8 and now["challenger-fp32"] == v2.fp32
    tags = mc.get_model_version(NAME, v2.int8).tags
    assert tags["variant"] == "int8" and tags["promotion"] == "challenger"
    assert tags["data_digest"] == dataset.digest and tags["metric.truth/dice"] == "0.5000"
    assert tags["parity"] == "passed"
    assert mc.get_run(run2.run_id).data.tags["pbf.promotion"] == "challenger"
    assert registry.champion_summary()["version"] == v1.int8


def test_champion_alias_gives_a_mask_through_pyfunc(champion):
    """``pyfunc.load_model(...@champion).predict`` takes encoded layer files and answers the
    mask, components and probability summary with the model's own threshold."""
    import base64

    import cv2
    import mlflow
    import pandas as pd

    client()
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    layer = np.full((40, 70), 1000, np.uint16)
    layer[10:20, 30:45] = 60000
    png = cv2.imencode(".png", layer)[1].tobytes()
    out = model.predict(pd.DataFrame({"image": [png, png]}))
    assert len(out) == 2 and bool(out.loc[0, "is_defective"])
    assert out.loc[0, "threshold"] == 0.6 and out.loc[0, "num_components"] == 1
    mask = cv2.imdecode(np.frombuffer(base64.b64decode(out.loc[0, "mask_png"]), np.uint8), 0)
    assert mask.shape == (40, 70) and np.array_equal(mask > 0, layer > 30000)
    assert json.loads(out.loc[0, "components"])[0]["bbox"] == [30, 10, 45, 20]
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["image"]


def test_alias_failure_midway_restores_previous_aliases(store, dataset, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    mc = client()
    before = aliases(mc)
    run, versions = register(store, dataset, tmp_path, gain=0.99)
    real = MlflowClient.set_registered_model_alias
    calls = []

    def flaky(self, name, alias, version):
        calls.append(alias)
        if len(calls) == 2:
            raise RuntimeError("registry went away")
        return real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", flaky)
    better = decide(Scores({"truth/dice": 0.99}, "e"), None, PromotionConfig(), parity_passed=True)
    with pytest.raises(registry.TrackingError, match="restored"):
        registry.apply_decision(run, versions, better)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    assert aliases(mc) == before


def test_registration_failure_leaves_no_half_registered_pair(store, dataset, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    mc = client()
    count = len(mc.search_model_versions(f"name='{NAME}'"))
    real = MlflowClient.create_model_version
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_model_version", flaky)
    with pytest.raises(registry.TrackingError, match="removed"):
        register(store, dataset, tmp_path, gain=0.7)
    assert len(mc.search_model_versions(f"name='{NAME}'")) == count


@pytest.mark.parametrize(
    ("nested", "flat"),
    [
        ({"a": {"b": 1, "c": {"d": [1, 2]}}}, {"a.b": 1, "a.c.d": [1, 2]}),
        ({}, {}),
        ({"x": None}, {"x": None}),
    ],
)
def test_flatten(nested, flat):
    assert runs.flatten(nested) == flat


def test_settings_registry_name_is_the_contract():
    assert Settings().registry_name == NAME


def test_unreachable_registry_is_not_mistaken_for_no_champion(store, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    def down(self, name, alias):
        raise MlflowException("API request failed: connection refused")

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", down)
    with pytest.raises(MlflowException, match="connection refused"):
        registry.download_alias("champion", "/tmp/unused")


def test_missing_alias_means_no_champion(store, tmp_path):
    assert registry.download_alias("no-such-alias", tmp_path) is None


def test_champion_alias_downloads_the_int8_file(store, tmp_path):
    found = registry.download_alias("champion", tmp_path)
    assert found is not None and found.path.suffix == ".onnx" and found.path.is_file()
    assert found.version == registry.champion_summary()["version"]
    assert found.tags["variant"] == "int8"


@pytest.mark.integration
def test_mlflow_models_serve_answers_a_mask(store, champion, tmp_path):
    """A real ``mlflow models serve`` of the champion alias: base64 layer file in, mask out."""
    import base64
    import os
    import subprocess
    import sys

    import cv2
    import httpx
    from helpers.processes import free_port, stop_tree, wait_ready

    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve"]
    cmd += ["-m", f"models:/{NAME}@champion", "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    # MLflow starts `uvicorn` by name: this environment's, first on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "PATH": path}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/ping", proc, log, 180)
        layer = np.full((40, 70), 1000, np.uint16)
        layer[10:20, 30:45] = 60000
        png = base64.b64encode(cv2.imencode(".png", layer)[1].tobytes()).decode()
        body = {"dataframe_split": {"columns": ["image"], "data": [[png]]}}
        r = httpx.post(f"{url}/invocations", json=body, timeout=60)
        assert r.status_code == 200, r.text
        row = r.json()["predictions"][0]
        assert row["is_defective"] and row["threshold"] == 0.6 and row["num_components"] == 1
        mask = cv2.imdecode(np.frombuffer(base64.b64decode(row["mask_png"]), np.uint8), 0)
        assert np.array_equal(mask > 0, layer > 30000)
        bad = {"dataframe_split": {"columns": ["image"], "data": [["bm90IGFuIGltYWdl"]]}}
        refused = httpx.post(f"{url}/invocations", json=bad, timeout=60)
        assert 400 <= refused.status_code < 600 and "not a recognised image" in refused.text
    finally:
        stop_tree(proc)
