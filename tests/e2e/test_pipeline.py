"""The pipeline against real servers: ``pbf run``, then a deployment run on a real worker.

Run 1: ``pbf run --config configs/tiny.yaml`` in a subprocess, tracking to a real ``mlflow
server``, orchestrated by a real ``prefect server``; it becomes champion. Run 2: the
``on-demand`` deployment of ``prefect.yaml``, run by ``prefect worker start`` on the process work
pool, with a promotion margin no model can meet: it must end Completed as challenger, reusing
run 1's prepared layers from the cache. Then both runs are compared in MLflow.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NAME = "pbf-defect-segmenter"
TINY = REPO / "configs" / "tiny.yaml"
POOL = "pbf-process"
FLOW_RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def env(e2e_root, prefect_env, prefect_server, mlflow_server) -> dict[str, str]:
    return {
        **prefect_env,
        "PREFECT_API_URL": prefect_server,
        "PBF_TRACKING_URI": mlflow_server,
        "PBF_STATE_DIR": str(e2e_root / "pbf-state"),
    }


def sh(args: list[str], env: dict, timeout: float = 120) -> str:
    proc = subprocess.run(
        args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def api(env: dict, path: str, body: dict | None = None) -> object:
    req = urllib.request.Request(
        env["PREFECT_API_URL"] + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def mlflow_client(env: dict):
    import mlflow

    mlflow.set_tracking_uri(env["PBF_TRACKING_URI"])
    mlflow.set_registry_uri(env["PBF_TRACKING_URI"])
    return mlflow.MlflowClient()


@pytest.fixture(scope="module")
def cli_run(env) -> str:
    """Run 1 through the ``pbf`` command line; returns its stdout."""
    return sh([str(BIN / "python"), "-m", "flows.cli", "run", "--config", str(TINY)], env, 900)


@pytest.fixture(scope="module")
def deployment_run(env, cli_run, e2e_root, processes) -> dict:
    """Run 2: deploy prefect.yaml, trigger on-demand, let a real worker run it; the flow run."""
    sh([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], env)
    sh([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
    config = yaml.safe_load(TINY.read_text())
    config["promotion"] = {"margin": 1.0}  # no model beats the champion by a whole Dice point
    out = sh(
        [
            str(BIN / "prefect"), "deployment", "run", "train-pipeline/on-demand",
            "--params", json.dumps({"config": config}),
        ],
        env,
    )  # fmt: skip
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out) or re.search(r"([0-9a-f-]{36})", out)
    assert flow_run_id, out
    flow_run_id = flow_run_id.group(1)
    log = e2e_root / "worker.log"
    worker = processes.start(
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "1"], env, log
    )
    try:
        deadline = time.monotonic() + FLOW_RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            run = api(env, f"/flow_runs/{flow_run_id}")
            if run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                break
            time.sleep(3)
    finally:
        processes.stop(worker)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{log.read_text()[-4000:]}"
    return run


def test_cli_run_prints_the_summary(cli_run):
    assert "champion" in cli_run and "int8 ONNX vs PyTorch fp32" in cli_run
    assert "MLflow UI" in cli_run and "Prefect UI" in cli_run and "serve" in cli_run


def test_deployment_run_completes_on_a_real_worker(deployment_run):
    assert deployment_run["state"]["name"] == "Completed"
    assert deployment_run["deployment_id"]


def test_second_run_reuses_the_prepared_layers(env, deployment_run):
    """Every layer of the per-layer map (a subflow on the configured task runner) is cached."""
    parent = {"parent_flow_run_id": {"any_": [deployment_run["id"]]}}
    (subflow,) = api(env, "/flow_runs/filter", {"flow_runs": parent, "limit": 10})
    assert subflow["name"] and subflow["state"]["name"] == "Completed"
    runs = api(
        env,
        "/task_runs/filter",
        {"flow_runs": {"id": {"any_": [subflow["id"]]}}, "limit": 200},
    )
    prepare = [r for r in runs if r["name"].startswith("prepare-layer-")]
    assert prepare and {r["state"]["name"] for r in prepare} == {"Cached"}


def test_runs_are_comparable_in_mlflow(env, deployment_run):
    mc = mlflow_client(env)
    exp = mc.get_experiment_by_name("pbf-synthetic")
    runs = mc.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2
    first, second = runs
    assert first.info.status == second.info.status == "FINISHED"
    assert set(first.data.params) == set(second.data.params) and len(first.data.params) > 50
    assert first.data.params["promotion.margin"] == "0.0"
    assert second.data.params["promotion.margin"] == "1.0"
    for run in runs:
        for key in ("test/truth/dice", "test/weak/dice", "epoch/train_loss"):
            assert key in run.data.metrics, key
        assert run.inputs.dataset_inputs[0].dataset.digest
    assert first.data.tags["pbf.promotion"] == "champion"
    assert second.data.tags["pbf.promotion"] == "challenger"
    assert "does not beat" in second.data.tags["pbf.promotion_reason"]


def test_both_variants_of_both_runs_are_registered(env, deployment_run):
    mc = mlflow_client(env)
    versions = mc.search_model_versions(f"name='{NAME}'")
    by_run: dict[str, set[str]] = {}
    for v in versions:
        by_run.setdefault(v.run_id, set()).add(v.tags["variant"])
    assert list(by_run.values()) == [{"fp32", "int8"}, {"fp32", "int8"}]


def test_champion_alias_resolves_and_serves(env, deployment_run, tmp_path):
    import cv2
    import mlflow
    import numpy as np
    import pandas as pd

    from pbf_core.deploy.metadata import read_onnx_spec

    mc = mlflow_client(env)
    champion = mc.get_model_version_by_alias(NAME, "champion")
    challenger = mc.get_model_version_by_alias(NAME, "challenger")
    assert champion.tags["variant"] == challenger.tags["variant"] == "int8"
    assert champion.tags["promotion"] == "champion" and champion.run_id != challenger.run_id
    fp32 = mc.get_model_version_by_alias(NAME, "champion-fp32")
    assert fp32.run_id == champion.run_id and fp32.tags["variant"] == "fp32"
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=tmp_path))
    spec = read_onnx_spec(next(local.rglob("*.onnx")))
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    png = cv2.imencode(".png", np.full((64, 80), 20_000, np.uint16))[1].tobytes()
    answer = model.predict(pd.DataFrame([{v: png for v in spec.views}])).iloc[0]
    assert (answer["width"], answer["height"]) == (80, 64)
    assert answer["threshold"] == spec.threshold  # the model's own threshold
