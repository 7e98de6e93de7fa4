"""The adaptation flow: a model fine-tuned to a user's printer on its unlabelled layers.

The flow form of ``pbf adapt``: the user's raw layers are prepared like the training pipeline's
(same per-layer tasks and cache), split, and :func:`pbf_core.steps.adapt_model` fine-tunes the
model on pseudo-labels and gates it. Everything is logged to an MLflow run of the user's dataset
(``adapt/...`` metrics, the adapted checkpoint and ``adaptation.json``). The adapted model is
never registered here: it is a candidate whose verdict the run records.
"""

# No `from __future__ import annotations`: Prefect resolves the parameters' annotations in the
# process that runs the flow (see flows/training.py).

from pathlib import Path

from prefect import flow

from flows.training import _flow_run_url, prepare_data
from pbf_core.config import PipelineConfig, Settings
from pbf_core.errors import CheckpointError
from tasks import data, model, runs


def champion_checkpoint(state: Path) -> Path:
    """The checkpoint of the registry's champion, from the local run that trained it.

    Raises:
        CheckpointError: no champion, or its run's checkpoint is not in this state directory.
    """
    from tasks.tracking.registry import champion_run_id

    run_id = champion_run_id()
    path = state / "runs" / str(run_id) / "model" / "model.safetensors"
    if run_id is None or not path.is_file():
        raise CheckpointError(path, "no local checkpoint of the champion; pass model=PATH")
    return path


@flow(name="adapt-model", log_prints=True)
def adapt_model(
    raw: str,
    model_path: str = "",
    config: PipelineConfig = PipelineConfig(),  # noqa: B008
) -> dict:
    """Adapt a model (the champion by default) to the layers in ``raw``; log the verdict.

    Args:
        raw: the user's layers, any layout ``pbf prepare`` reads.
        model_path: a ``model.safetensors``; empty = the registry champion's checkpoint.
        config: preparation (``prepare``), fine-tune patches/device (``train``) and the
            adaptation's schedule and gate (``adapt``).

    Returns:
        The adaptation report (``adaptation.json``) with the MLflow run id.
    """
    state = Settings().state_dir.resolve()
    source = Path(model_path) if model_path else champion_checkpoint(state)
    config = config.model_copy(update={"data": config.data.model_copy(update={"raw": Path(raw)})})
    train = config.train.model_copy(update={"labels": "weak"})
    dataset = data.split_dataset(prepare_data(config, state), train)
    run = runs.start_run(config, dataset, _flow_run_url())
    out = state / "adaptations" / run.run_id
    try:
        adapted = model.adapt(str(source), dataset, config.adapt, train, run, str(out))
    except BaseException:
        runs.fail_run(run)
        raise
    runs.finish_run(run)
    print(f"adaptation {'accepted' if adapted.accepted else 'rejected'}: {adapted.reason}")
    return {**adapted.to_dict(), "run_id": run.run_id}
