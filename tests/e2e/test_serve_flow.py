"""``pbf serve-flow`` against a real Prefect server: the served deployment runs a flow to the end.

The served process registers ``train-pipeline/<name>`` with its schedule; the test triggers one
run of it through the API (as the UI's "Quick run" does) and waits until the run completes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.processes import stop_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = REPO / "configs" / "tiny.yaml"
NAME = "served-by-test"
TIMEOUT_S = 600


def api(url: str, path: str, body: dict | None = None, attempts: int = 6) -> dict | None:
    """JSON answer of the Prefect API; None for 404. A busy server's 503/429 is retried with
    backoff (honouring ``Retry-After``), as Prefect's own client does."""
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code not in (429, 503) or attempt == attempts - 1:
                raise
            time.sleep(float(exc.headers.get("Retry-After") or 2**attempt))
    raise AssertionError("unreachable")


def test_served_flow_runs_to_completion(tmp_path, prefect_env, prefect_server):
    env = {**prefect_env, "PREFECT_API_URL": prefect_server, "PBF_STATE_DIR": str(tmp_path)}
    cmd = [str(BIN / "python"), "-m", "flows.cli", "serve-flow", "--config", str(TINY)]
    cmd += ["--name", NAME, "--cron", "0 3 * * *"]
    log = tmp_path / "serve-flow.log"
    with log.open("w") as out:
        served = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while (
            deployment := api(prefect_server, f"/deployments/name/train-pipeline/{NAME}")
        ) is None:
            assert served.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the deployment never registered"
            time.sleep(1)
        assert deployment["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        run = api(prefect_server, f"/deployments/{deployment['id']}/create_flow_run", {})
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            state = api(prefect_server, f"/flow_runs/{run['id']}")["state"]
            if state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                break
            assert time.monotonic() < deadline, f"still {state['type']} after {TIMEOUT_S} s"
            time.sleep(2)
    finally:
        stop_tree(served)
    assert state["type"] == "COMPLETED", f"{state}\n{log.read_text()[-4000:]}"
