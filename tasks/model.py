"""Model tasks: train, evaluate, export to ONNX, static int8 quantization, benchmark.

Each task calls one ``pbf_core`` function, writes its files under the run directory it is given
and returns paths and small dicts.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pbf_core.config import BenchmarkConfig, QuantizeConfig, TrainConfig
from pbf_core.data.dataset import load_manifest
from tasks import reports, tracking


def _samples(dataset: dict, ids: list[str]):
    from pbf_core.data.dataset import load_samples

    root = Path(dataset["path"])
    by_id = {e.id: e for e in load_manifest(root).layers}
    return load_samples(root, [by_id[i] for i in ids])


@task(name="train", cache_policy=NO_CACHE)
def train_model(dataset: dict, splits: dict, cfg: TrainConfig, run_id: str, out: str) -> dict:
    """Train on the prepared dataset, logging every epoch and the host's load to the MLflow run.

    Returns:
        ``{"checkpoint", "history", "metrics", "threshold", "spec"}`` (history without epochs).

    Raises:
        RuntimeError: training drew another split than the pipeline's split step.
    """
    from pbf_core.model.training import train

    log_to_mlflow, logger = tracking.epoch_logger(run_id), get_run_logger()

    def on_epoch_end(metrics: dict[str, float]) -> None:
        log_to_mlflow(metrics)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch")
        logger.info("epoch %s: %s", metrics.get("epoch"), shown)

    with tracking.system_metrics(run_id):
        result = train(dataset["path"], out, cfg, on_epoch_end=on_epoch_end, progress=False)
    if result.split != splits["split"]:
        raise RuntimeError(
            f"training split {result.split} differs from the pipeline's {splits['split']}"
        )
    history = {k: v for k, v in result.history.to_dict().items() if k != "epochs"}
    return {
        "checkpoint": str(result.checkpoint),
        "history": history,
        "metrics": result.metrics,
        "threshold": result.spec.threshold,
        "spec": result.spec.model_dump(mode="json"),
    }


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(
    model: str, dataset: dict, ids: list[str], out: str | None = None, device: str = "cpu"
) -> dict:
    """Score a checkpoint or ONNX file on prepared layers against true masks and weak labels.

    Args:
        model: ``.safetensors`` checkpoint or ``.onnx`` file (its spec from the metadata).
        dataset: ``summarize_dataset`` output.
        ids: layers to score (the frozen evaluation set).
        out: where to write the report files (PR curve, threshold table, overlays); None: none.
        device: torch device for a checkpoint.

    Returns:
        ``{"evaluation": evaluate(...) dict, "metrics": flat test/* numbers, "gate": promotion
        scores, "artifacts": out}``.
    """
    from pbf_core.deploy.inference import Segmenter
    from pbf_core.evaluation.scores import evaluate, predict_samples

    if model.endswith(".onnx"):
        segmenter = Segmenter.from_onnx(model)
    else:
        segmenter = Segmenter.from_checkpoint(model, device=device)
    samples = _samples(dataset, ids)
    probs = predict_samples(segmenter, samples)
    result = evaluate(segmenter, samples, probs=probs)
    if out is not None:
        reports.write_evaluation(Path(out), samples, probs, result, segmenter.spec.threshold)
    return {
        "evaluation": result,
        "metrics": tracking.evaluation_metrics(result),
        "gate": tracking.gate_metrics(result),
        "artifacts": out,
    }


@task(name="export-onnx", retries=1, cache_policy=NO_CACHE)
def export_model(checkpoint: str, out: str) -> dict:
    """Export the checkpoint to ``out`` (fp32 ONNX, spec in its metadata), checked against torch."""
    from pbf_core.deploy.export import export_onnx
    from pbf_core.model.checkpoints import load_checkpoint

    model, spec = load_checkpoint(checkpoint)
    meta = {**spec.model_dump(mode="json"), "variant": "onnx-fp32"}
    check = export_onnx(model, out, in_channels=spec.in_channels, metadata=meta)
    return {"path": out, "max_abs_diff": check.max_abs_diff}


@task(name="quantize-int8", retries=1, cache_policy=NO_CACHE)
def quantize_model(
    fp32: str, dataset: dict, train_ids: list[str], out: str, cfg: QuantizeConfig
) -> str:
    """Static int8 (QDQ) from tiles of the training layers, centred on their labels in part."""
    from pbf_core.deploy.metadata import read_metadata
    from pbf_core.deploy.quantization import quantize_static, sample_calibration_tiles

    tile = cfg.calibration_tile or int(read_metadata(fp32)["tile_size"])
    samples = _samples(dataset, train_ids)
    tiles = sample_calibration_tiles(
        [s.image for s in samples], tile, cfg, [s.weak for s in samples]
    )
    return str(quantize_static(fp32, out, tiles, cfg))


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark_variants(
    checkpoint: str,
    fp32: str,
    int8: str,
    dataset: dict,
    eval_ids: list[str],
    out: str,
    cfg: BenchmarkConfig,
    quantize_cfg: QuantizeConfig,
) -> dict:
    """The shipped variants in one run: latency, throughput, size, memory, parity with torch fp32.

    The prototype's dynamic-quantization baseline is left to ``benchmarks/inference.py``: it
    changes nothing in a U-Net and would only lengthen every training run.

    Returns:
        ``{"json", "markdown", "table", "speedup" (onnx-int8 vs torch-fp32 per side), "parity"
        (onnx-int8's), "size_mb" per variant, "metrics" (flat numbers for MLflow)}``.
    """
    from pbf_core.bench.report import format_markdown, write_report
    from pbf_core.bench.runner import EvalSet, Variant, benchmark

    variants = [
        Variant("torch-fp32", "torch", Path(checkpoint)),
        Variant("onnx-fp32", "onnx", Path(fp32)),
        Variant("onnx-int8", "onnx", Path(int8)),
    ]
    report = benchmark(variants, cfg, EvalSet(Path(dataset["path"]), tuple(eval_ids)), quantize_cfg)
    path = write_report(report, out)
    int8_result = report.result("onnx-int8")
    return {
        "json": str(path),
        "markdown": str(path.with_suffix(".md")),
        "table": format_markdown(report),
        "speedup": report.speedups(int8_result),
        "parity": int8_result.parity or {},
        "size_mb": {v.name: v.size_mb for v in report.variants},
        "metrics": reports.benchmark_metrics(report),
    }
