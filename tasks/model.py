"""Model tasks: train, evaluate, export, quantize, benchmark. Each calls one step of
:mod:`pbf_core.steps` and logs what it made to the run's MLflow run.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pbf_core import steps
from pbf_core.config import (
    AdaptConfig,
    BenchmarkConfig,
    HeldOutConfig,
    QuantizeConfig,
    TrainConfig,
)
from pbf_core.summary import TrackingRun
from tasks.tracking import runs


@task(name="train", cache_policy=NO_CACHE)
def train(
    dataset: steps.PreparedDataset, cfg: TrainConfig, run: TrackingRun, out: str
) -> steps.TrainedModel:
    """Train on the split dataset, logging every epoch and the host's load to the MLflow run."""
    log_to_mlflow, logger = runs.epoch_logger(run.run_id), get_run_logger()

    def on_epoch_end(metrics: dict[str, float]) -> None:
        log_to_mlflow(metrics)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch")
        # counted from 1, as `pbf train` prints them (the MLflow step stays the 0-based index)
        logger.info("epoch %d/%d: %s", int(metrics["epoch"]) + 1, cfg.epochs, shown)

    with runs.system_metrics(run.run_id):
        return steps.train_model(dataset, cfg, out, on_epoch_end=on_epoch_end, progress=False)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(
    trained: steps.TrainedModel, dataset: steps.PreparedDataset, run: TrackingRun, out: str
) -> steps.Evaluation:
    """Score the candidate on the evaluation layers; log the scores and the report files."""
    device = trained.history.device
    evaluation = steps.evaluate_model(trained.checkpoint, dataset, out=out, device=device)
    runs.log_artifacts(run.run_id, out, "evaluation", evaluation.metrics())
    return evaluation


@task(name="held-out-style", cache_policy=NO_CACHE)
def held_out(
    trained: steps.TrainedModel, cfg: HeldOutConfig, run: TrackingRun
) -> steps.HeldOutScores | None:
    """Score the candidate on a style family no training build used; log the scores."""
    if cfg.layers < 1:
        return None
    scores = steps.evaluate_held_out(trained.checkpoint, cfg, device=trained.history.device)
    runs.log_metrics(run.run_id, scores.metrics())
    return scores


@task(name="adapt", cache_policy=NO_CACHE)
def adapt(
    source: str,
    dataset: steps.PreparedDataset,
    cfg: AdaptConfig,
    train: TrainConfig,
    run: TrackingRun,
    out: str,
) -> steps.AdaptedModel:
    """Fine-tune ``source`` on the user's layers with pseudo-labels; log the gate and scores."""
    with runs.system_metrics(run.run_id):
        adapted = steps.adapt_model(source, dataset, cfg, train, out, progress=False)
    runs.log_artifacts(run.run_id, out, "adaptation", adapted.metrics())
    get_run_logger().info(
        "adaptation %s: %s", "accepted" if adapted.accepted else "rejected", adapted.reason
    )
    return adapted


@task(name="export-onnx", retries=1, cache_policy=NO_CACHE)
def export(trained: steps.TrainedModel, out: str) -> steps.ExportedModel:
    """The fp32 ONNX file of the checkpoint, checked against PyTorch."""
    return steps.export_model(trained.checkpoint, out)


@task(name="quantize-int8", retries=1, cache_policy=NO_CACHE)
def quantize(
    exported: steps.ExportedModel,
    dataset: steps.PreparedDataset,
    cfg: QuantizeConfig,
    run: TrackingRun,
    out: str,
) -> steps.QuantizedModel:
    """Static int8 calibrated on the training layers, gated on parity; logs the gate."""
    quantized = steps.quantize_model(exported, dataset, cfg, out)
    runs.log_metrics(run.run_id, runs.parity_metrics(quantized))
    return quantized


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark(
    trained: steps.TrainedModel,
    quantized: steps.QuantizedModel,
    cfg: BenchmarkConfig,
    run: TrackingRun,
    out: str,
) -> steps.BenchmarkReport:
    """The shipped variants side by side: latency, throughput, size, memory; logged to the run.

    The prototype's dynamic-quantization baseline is left to ``pbf benchmark``: it changes
    nothing in a U-Net and would only lengthen every training run.
    """
    report = steps.benchmark_model(
        trained.checkpoint, quantized.fp32, quantized.int8, out, cfg, baseline=False
    )
    runs.log_artifacts(run.run_id, out, "benchmark", runs.benchmark_metrics(report))
    return report
