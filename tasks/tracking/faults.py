"""Tracking faults: a bounded retry budget, one line naming the server and the step, and runs a
dead server left ``RUNNING`` marked ``FAILED`` once it answers again.

MLflow retries every HTTP call 7 times with a doubling backoff and waits 120 s per attempt by
default: a tracking server that dies mid-run used to hang the pipeline for 12½ minutes. Unless
the user set them, :func:`bound_retries` lowers those settings to 2 retries, a 1 s backoff and
15 s per attempt, so a dead server ends a run within about a minute.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pbf_core.config import Settings
from pbf_core.errors import PbfError
from pbf_core.redaction import redact

F = TypeVar("F", bound=Callable[..., Any])

#: MLflow's HTTP settings when the user has not set them (environment variables).
RETRY_BUDGET = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
#: Words of the errors MLflow and requests raise when a server does not answer.
_UNREACHABLE = (
    "Max retries exceeded", "Connection refused", "Failed to establish a new connection",
    "Read timed out", "Connection aborted", "RemoteDisconnected", "timed out",
    "Connection reset", "Name or service not known", "failed with exception",
)  # fmt: skip


class TrackingUnavailableError(PbfError):
    """The tracking server did not answer; names the server and the step."""


def bound_retries() -> None:
    """Set :data:`RETRY_BUDGET` for every setting the environment does not set."""
    for name, value in RETRY_BUDGET.items():
        os.environ.setdefault(name, value)


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it came from) says the server did not answer."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ConnectionError | TimeoutError):
            return True
        text = f"{type(exc).__name__}: {exc}"
        if any(words in text for words in _UNREACHABLE):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def tracking_step(step: str) -> Callable[[F], F]:
    """Turn "the server did not answer" during ``step`` into one :class:`TrackingUnavailableError`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except TrackingUnavailableError:
                raise
            except Exception as exc:
                if not unreachable(exc):
                    raise
                raise TrackingUnavailableError(_line(step, exc)) from exc

        return call  # type: ignore[return-value]

    return wrap


def _line(step: str, exc: BaseException) -> str:
    from tasks.tracking.store import resolve_store

    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    reason = redact(str(root).splitlines()[0] if str(root) else type(root).__name__)[:200]
    server = redact(resolve_store().uri)
    return f"tracking server {server} did not answer while {step} ({reason})"


def _pending_file(settings: Settings | None = None) -> Path:
    return (settings or Settings()).state_dir.resolve() / "tracking" / "unfinished-runs.json"


def remember_failed(run_id: str, settings: Settings | None = None) -> None:
    """Note a run the server could not be told had failed (it is marked on the next chance)."""
    path = _pending_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted({*_pending(path), run_id})
    path.write_text(json.dumps(ids))


def _pending(path: Path) -> list[str]:
    try:
        return list(json.loads(path.read_text()))
    except (OSError, ValueError):
        return []


def settle_failed(mc, settings: Settings | None = None) -> list[str]:
    """Mark the runs :func:`remember_failed` noted ``FAILED`` (those still ``RUNNING``).

    Returns:
        The run ids marked now; those the server still cannot be told about stay noted.
    """
    path = _pending_file(settings)
    marked, left = [], []
    for run_id in _pending(path):
        try:
            if mc.get_run(run_id).info.status == "RUNNING":
                mc.set_terminated(run_id, "FAILED")
                marked.append(run_id)
        except Exception as exc:
            if unreachable(exc):
                left.append(run_id)
    if marked or left or path.exists():
        path.write_text(json.dumps(left))
    return marked
