"""The training pipeline: raw layers → prepared data → model → ONNX fp32/int8 → registry → gate.

Reads top to bottom like the data flow in ``DESIGN.md``. One validated parameter,
:class:`pbf_core.config.PipelineConfig`, which Prefect renders as a form for deployments.
Everything is written under the state directory (``PBF_STATE_DIR``, default ``.pbf``).
"""

from __future__ import annotations

import hashlib
import tempfile
import time

from prefect import flow, unmapped
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from pbf_core.config import PipelineConfig, Settings
from tasks import data, model, packaging, reports, tracking
from tasks.promotion import decide_promotion


@flow(name="train-pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def train_pipeline(config: PipelineConfig = PipelineConfig()) -> dict:  # noqa: B008 (frozen)
    """Train, evaluate, export, quantize, benchmark, register, gate and package a segmenter.

    Args:
        config: data source (synthetic build by default), preparation, training (device
            included), quantization, benchmark and promotion settings.

    Returns:
        The run summary: dataset, MLflow run and link, registered versions, promotion decision,
        the champion's version, scores against truth and weak labels, int8 speed-up and parity.
    """
    started = time.time()
    state = Settings().state_dir.resolve()
    name = config.data.dataset_name

    # ingest: a synthetic build (cached by its config) or the given raw data
    if config.data.raw is None:
        key = hashlib.sha256(config.data.synth.model_dump_json().encode()).hexdigest()[:12]
        build = state / "data" / "raw" / f"synthetic-{key}"
        synth = data.synthesize.with_options(refresh_cache=not (build / "manifest.json").is_file())
        raw = synth(config.data.synth, str(build))
    else:
        raw = str(config.data.raw)
    found = data.discover_layers(raw, str(state / "data" / "staging"))

    # filter + label synthesis per layer, mapped over the task runner, cached by raw bytes
    prepared = data.prepared_dir(state / "data" / "prepared", name, found["digest"], config.prepare)
    prepare = data.prepare_one.with_options(refresh_cache=not data.is_prepared(prepared))
    outcomes = prepare.map(
        found["source"].records, found["digests"], unmapped(str(prepared)), unmapped(config.prepare)
    ).result()
    dataset = data.summarize_dataset(name, found, outcomes, str(prepared), config.prepare, started)
    splits = data.split_dataset(dataset, config.train)

    run = tracking.start_run(config, dataset, flow_run.get_flow_run_ui_url())
    run_dir = state / "runs" / run["run_id"]
    try:
        # train → evaluate
        trained = model.train_model(
            dataset, splits, config.train, run["run_id"], str(run_dir / "model")
        )
        evaluation = model.evaluate_model(
            trained["checkpoint"],
            dataset,
            splits["eval_ids"],
            str(run_dir / "evaluation"),
            config.train.device,
        )
        tracking.log_artifacts(
            run["run_id"], evaluation["artifacts"], "evaluation", evaluation["metrics"]
        )

        # export ONNX → static int8 → benchmark (with the parity gate)
        fp32 = model.export_model(trained["checkpoint"], str(run_dir / "onnx" / "model.fp32.onnx"))
        int8 = model.quantize_model(
            fp32["path"],
            dataset,
            splits["split"]["train"],
            str(run_dir / "onnx" / "model.int8.onnx"),
            config.quantize,
        )
        bench = model.benchmark_variants(
            trained["checkpoint"], fp32["path"], int8, dataset, splits["eval_ids"],
            str(run_dir / "benchmark"), config.benchmark, config.quantize,
        )  # fmt: skip
        tracking.log_artifacts(
            run["run_id"], str(run_dir / "benchmark"), "benchmark", bench["metrics"]
        )

        # MLflow: both variants registered → promotion gate → aliases
        headline = {k: v for k, v in evaluation["gate"].items() if k.split("/")[1] in _HEADLINE}
        versions = tracking.register_variants(
            run, {"fp32": fp32["path"], "int8": int8, "parity": bench["parity"]},
            dataset["digest"], headline, dataset["channels"],
        )  # fmt: skip
        champion = _score_champion(dataset, splits["eval_ids"])
        decision = decide_promotion(
            evaluation, champion, splits["eval_digest"], bench["parity"], config.promotion
        )
        tracking.apply_decision(run, versions, decision)

        # package: the new champion into the BentoML model store the service loads from
        packaged = packaging.package_champion_task() if decision.promote else None
    except BaseException:
        tracking.finish_run(run["run_id"], "FAILED")
        raise
    tracking.finish_run(run["run_id"])

    summary = {
        "dataset": {k: dataset[k] for k in ("name", "path", "digest", "layers")},
        "run_id": run["run_id"],
        "run_url": run["url"],
        "registry": Settings().registry_name,
        "versions": versions,
        "decision": decision.to_dict(),
        "champion_version": tracking.champion_version(),
        "bento_model": packaged,
        "eval_digest": splits["eval_digest"],
        "eval_layers": len(splits["eval_ids"]),
        "scores": {
            labels: {m: evaluation["gate"][f"{labels}/{m}"] for m in _HEADLINE}
            for labels in ("truth", "weak")
            if f"{labels}/dice" in evaluation["gate"]
        },
        "training": trained["history"],
        "speedup": bench["speedup"],
        "parity": bench["parity"],
        "seconds": round(time.time() - started, 1),
    }
    reports.publish_summary(summary)
    return summary


_HEADLINE = ("dice", "recall", "precision", "instance_recall", "false_positives_per_image")


def _score_champion(dataset: dict, eval_ids: list[str]) -> dict | None:
    """The current champion scored on this run's evaluation layers, or None without one."""
    with tempfile.TemporaryDirectory(prefix="pbf-champion-") as tmp:
        found = tracking.fetch_alias(f"{tracking.CHAMPION}-fp32", tmp) or tracking.fetch_alias(
            tracking.CHAMPION, tmp
        )
        if found is None:
            return None
        scored = model.evaluate_model(found["path"], dataset, eval_ids)
    return {"version": found["version"], "evaluation": scored}
