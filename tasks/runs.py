"""The MLflow run of a pipeline run, as Prefect tasks over :mod:`tasks.tracking.runs`."""

from __future__ import annotations

from prefect import task

from pbf_core.config import PipelineConfig
from pbf_core.data.dataset import PreparedDataset
from pbf_core.summary import TrackingRun
from tasks.tracking import runs
from tasks.tracking.faults import TrackingUnavailableError


def unless_unreachable(task, task_run, state) -> bool:
    """Prefect's retry condition of tracking tasks: retry, unless the server did not answer
    (MLflow has retried that call already; more would only delay the one-line error)."""
    try:
        state.result()
    except TrackingUnavailableError:
        return False
    except Exception:
        pass  # any other failure: Prefect's retries as configured
    return True


@task(
    name="start-tracking-run",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=unless_unreachable,
)
def start_run(
    config: PipelineConfig, dataset: PreparedDataset, flow_run_url: str | None = None
) -> TrackingRun:
    """Open the run: the config as params, the dataset (with its split) as an input."""
    return runs.start_run(config, dataset, flow_run_url)


@task(name="finish-tracking-run")
def finish_run(run: TrackingRun, status: str = "FINISHED") -> None:
    runs.finish_run(run.run_id, status)


@task(name="fail-tracking-run", retries=0)
def fail_run(run: TrackingRun) -> bool:
    """Mark the run FAILED, or note it for the next run when the server does not answer."""
    return runs.fail_run(run.run_id)
