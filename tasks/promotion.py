"""The promotion gate as a task: scores of candidate and champion → :class:`Decision`."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger

from pbf_core.config import PromotionConfig
from pbf_core.evaluation.promotion import Decision, Scores, decide


@task(name="decide-promotion", cache_policy=NO_CACHE)
def decide_promotion(
    candidate: dict,
    champion: dict | None,
    eval_digest: str,
    parity: dict,
    cfg: PromotionConfig,
) -> Decision:
    """Apply :func:`pbf_core.promotion.decide` to two ``evaluate_model`` outputs.

    Both were scored by the same code on the same layers (``eval_digest``), so the champion is
    judged on the candidate's evaluation set whatever set it was first scored on.

    Args:
        candidate: the candidate's ``evaluate_model`` output.
        champion: ``{"version", "evaluation": evaluate_model output}`` or None.
        eval_digest: digest of the evaluation layers.
        parity: the int8 variant's parity result (``passed``, ``reason``).
        cfg: metric, labels, margin.
    """
    champ = None
    if champion is not None:
        champ = Scores(
            champion["evaluation"]["gate"], eval_digest, f"champion v{champion['version']}"
        )
    decision = decide(
        Scores(candidate["gate"], eval_digest, "candidate"),
        champ,
        cfg,
        parity_passed=bool(parity.get("passed")),
        parity_reason=parity.get("reason", ""),
    )
    _logger().info("promotion: %s (%s)", decision.alias, decision.reason)
    return decision


def _logger():
    """The task run's logger (shown in the Prefect UI), or a plain one outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("pbf.promotion")
