"""Tracking faults without a server: the retry budget, the one-line error, the noted runs."""

from __future__ import annotations

import pytest

from tasks.tracking import faults


def test_retry_budget_fills_only_what_the_user_left_unset(monkeypatch):
    for name in faults.RETRY_BUDGET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    faults.bound_retries()
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"


def _chained() -> Exception:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise RuntimeError("API request to http://u:pw@h:5000/api failed") from exc
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_chained(), True),
        (TimeoutError("read"), True),
        (RuntimeError("Max retries exceeded with url: /api/2.0/mlflow/runs/get"), True),
        (ValueError("bad metric value"), False),
        (KeyError("run_id"), False),
    ],
)
def test_unreachable_reads_the_whole_chain(exc, expected):
    assert faults.unreachable(exc) is expected


def test_tracking_step_says_server_and_step_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PBF_TRACKING_URI", "http://pbf:s3cret@127.0.0.1:5999")
    monkeypatch.setenv("PBF_STATE_DIR", str(tmp_path))

    @faults.tracking_step("logging metrics")
    def log() -> None:
        raise _chained()

    with pytest.raises(faults.TrackingUnavailableError) as caught:
        log()
    text = str(caught.value)
    assert "\n" not in text and "s3cret" not in text
    assert text.startswith("tracking server http://pbf:***@127.0.0.1:5999 did not answer while ")
    assert "logging metrics" in text and "Connection refused" in text


def test_other_errors_pass_through_unchanged():
    @faults.tracking_step("logging metrics")
    def log() -> None:
        raise ValueError("metric value must be a number")

    with pytest.raises(ValueError, match="must be a number"):
        log()


class FakeClient:
    """Runs by id with a status; ``down`` makes every call fail as a dead server would."""

    def __init__(self, statuses: dict[str, str], down: bool = False) -> None:
        self.statuses, self.down = statuses, down

    def get_run(self, run_id: str):
        if self.down:
            raise ConnectionError("Connection refused")
        if run_id not in self.statuses:
            raise RuntimeError(f"Run '{run_id}' not found")
        info = type("Info", (), {"status": self.statuses[run_id]})
        return type("Run", (), {"info": info})

    def set_terminated(self, run_id: str, status: str) -> None:
        self.statuses[run_id] = status


def test_noted_runs_are_marked_failed_once_the_server_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("PBF_STATE_DIR", str(tmp_path))
    for run_id in ("r1", "r2", "gone"):
        faults.remember_failed(run_id)
    assert faults.settle_failed(FakeClient({}, down=True)) == []  # still down: kept
    mc = FakeClient({"r1": "RUNNING", "r2": "FINISHED"})
    assert faults.settle_failed(mc) == ["r1"]
    assert mc.statuses == {"r1": "FAILED", "r2": "FINISHED"}
    assert faults.settle_failed(mc) == []  # nothing left noted


class _Monitor:
    """Stands in for MLflow's system metrics thread (no server in these unit tests)."""

    def __init__(self, *args, **kwargs):
        pass

    def start(self):
        pass

    def finish(self):
        pass


class _DeadClient:
    def get_run(self, run_id):
        raise RuntimeError("API request to http://127.0.0.1:1/api failed: Connection refused")


def test_system_metrics_leaves_a_failed_steps_error_alone(monkeypatch, tmp_path):
    """A step that failed (here: because the server died) keeps its own error; before, the
    closing check on the run's metrics replaced it with MLflow's raw exception."""
    import mlflow.system_metrics.system_metrics_monitor as monitor

    from tasks.tracking import runs

    monkeypatch.setenv("PBF_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    monkeypatch.setattr(monitor, "SystemMetricsMonitor", _Monitor)
    monkeypatch.setattr(runs, "client", lambda: _DeadClient())
    with pytest.raises(ValueError, match="the step's own"), runs.system_metrics("run-1"):
        raise ValueError("the step's own error")
    # after a step that succeeded, a dead server is the one clear tracking error
    failing = pytest.raises(faults.TrackingUnavailableError, match="logging system metrics")
    with failing, runs.system_metrics("run-1"):
        pass
