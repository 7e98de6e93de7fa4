"""The registry side of a run, as Prefect tasks: register both variants, score the current
champion, decide, move the aliases, package the champion for serving.
"""

from __future__ import annotations

import tempfile

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger

from pbf_core import steps
from pbf_core.config import PromotionConfig
from pbf_core.evaluation.promotion import CHAMPION, Champion
from pbf_core.summary import RegisteredVersions, TrackingRun
from tasks import packaging
from tasks.runs import unless_unreachable
from tasks.tracking import registry


def _logger():
    """The task run's logger (shown in the Prefect UI), or a plain one outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("pbf.registry")


@task(
    name="log-and-register",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=unless_unreachable,
)
def register(
    run: TrackingRun,
    quantized: steps.QuantizedModel,
    dataset: steps.PreparedDataset,
    evaluation: steps.Evaluation,
) -> RegisteredVersions:
    """Log the fp32 and int8 files as MLflow models of the run and register both, or neither."""
    return registry.register_variants(run, quantized, dataset, evaluation)


@task(
    name="score-champion",
    retries=2,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
    retry_condition_fn=unless_unreachable,
)
def score_champion(dataset: steps.PreparedDataset) -> Champion | None:
    """The current champion (its fp32 sibling when registered) scored on this run's evaluation
    layers; None without a champion."""
    with tempfile.TemporaryDirectory(prefix="pbf-champion-") as tmp:
        found = registry.download_alias(f"{CHAMPION}-fp32", tmp) or registry.download_alias(
            CHAMPION, tmp
        )
        if found is None:
            return None
        # reasons name the version `champion` points at (the int8 one), not its fp32 sibling
        current = registry.champion_summary()
        version = current["version"] if current else found.version
        return Champion(version, steps.evaluate_model(found.path, dataset))


@task(name="decide-promotion", cache_policy=NO_CACHE)
def decide(
    candidate: steps.Evaluation,
    champion: Champion | None,
    dataset: steps.PreparedDataset,
    quantized: steps.QuantizedModel,
    cfg: PromotionConfig,
) -> steps.Decision:
    """The promotion gate on the candidate's and the champion's evaluations of the same layers."""
    decision = steps.decide_promotion(
        candidate, champion, dataset.require_split().eval_digest, quantized.int8_parity, cfg
    )
    _logger().info("promotion: %s (%s)", decision.alias, decision.reason)
    return decision


@task(name="promote", retries=0)
def promote(run: TrackingRun, versions: RegisteredVersions, decision: steps.Decision) -> dict:
    """Move the aliases (champion* or challenger*) to the new versions, together or not at all."""
    moved = registry.apply_decision(run, versions, decision)
    _logger().info("%s → %s (%s)", moved["alias"], moved["aliases"], decision.reason)
    return moved


@task(
    name="champion-version",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=unless_unreachable,
)
def champion_version() -> str | None:
    """Version the ``champion`` alias points to now (the int8 variant), or None."""
    found = registry.champion_summary()
    return found["version"] if found else None


@task(name="package-champion", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def package_champion(alias: str = CHAMPION) -> str:
    """Package the registry's champion into the BentoML store (the last step of a promotion)."""
    packaging.use_state_store()
    return packaging.package_champion(alias)
