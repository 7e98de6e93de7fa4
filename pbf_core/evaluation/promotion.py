"""The promotion gate: does a candidate model replace the registry's champion?

A pure decision over numbers: the candidate and the current champion are scored on the same
frozen evaluation layers (same digest), and the candidate's int8 variant must have passed its
parity gate (:func:`decide_promotion`). The registry side (aliases, rollback) lives in the
tracking code of the orchestration layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from pbf_core.config import PromotionConfig
from pbf_core.errors import SubjectError

if TYPE_CHECKING:
    from pbf_core.deploy.parity import Parity
    from pbf_core.evaluation.scores import Evaluation

#: Metrics where a smaller value is better; every other metric is maximised.
LOWER_IS_BETTER: frozenset[str] = frozenset({"false_positives_per_image"})

CHAMPION = "champion"
CHALLENGER = "challenger"


class PromotionError(SubjectError, ValueError):
    """The scores cannot be compared (missing metric); names the model and the metric."""


@dataclass(frozen=True)
class Scores:
    """A model's scores on an evaluation set.

    Attributes:
        metrics: flat ``"<labels>/<metric>"`` → value, e.g. ``{"truth/dice": 0.91, "weak/dice":
            0.88}``; ``labels`` is ``truth`` (true masks) or ``weak`` (weak labels).
        eval_digest: digest of the evaluation layers the scores were measured on.
        name: how the model is called in the reason (``candidate``, ``champion v3``).
    """

    metrics: Mapping[str, float]
    eval_digest: str
    name: str = "candidate"


@dataclass(frozen=True)
class Decision:
    """Outcome of the gate: ``promote`` → alias ``champion``, else ``challenger``; ``reason`` says why."""

    promote: bool
    reason: str
    metric: str
    candidate_value: float | None = None
    champion_value: float | None = None

    @property
    def alias(self) -> str:
        return CHAMPION if self.promote else CHALLENGER

    def to_dict(self) -> dict:
        return {**asdict(self), "alias": self.alias}


def metric_key(cfg: PromotionConfig, candidate: Scores) -> str:
    """The ``"<labels>/<metric>"`` key compared: true masks when ``labels=auto`` and present."""
    if cfg.labels != "auto":
        return f"{cfg.labels}/{cfg.metric}"
    truth = f"truth/{cfg.metric}"
    return truth if truth in candidate.metrics else f"weak/{cfg.metric}"


def _value(scores: Scores, key: str) -> float:
    try:
        return float(scores.metrics[key])
    except KeyError:
        raise PromotionError(
            scores.name, f"no metric {key!r}; has {sorted(scores.metrics)}"
        ) from None


def decide(
    candidate: Scores,
    champion: Scores | None,
    cfg: PromotionConfig,
    *,
    parity_passed: bool,
    parity_reason: str = "",
) -> Decision:
    """Promote the candidate only if its int8 variant passed parity and it beats the champion.

    "Beats" means better than the champion by more than ``cfg.margin`` on the configured metric,
    both measured on the same evaluation layers; a tie never replaces the champion. Without a
    champion, the first candidate passing parity is promoted. A candidate missing ``cfg.floor``
    (when set) is never promoted.

    Args:
        candidate: the new model's scores.
        champion: the current champion's scores on the candidate's evaluation layers, or None.
        cfg: metric, reference labels, margin, whether parity is required.
        parity_passed: the candidate's int8 variant passed its parity gate.
        parity_reason: what failed, quoted in the reason.

    Returns:
        The decision with a one-sentence reason.

    Raises:
        PromotionError: a score lacks the compared metric.
    """
    key = metric_key(cfg, candidate)
    cand = _value(candidate, key)
    if cfg.require_parity and not parity_passed:
        detail = f": {parity_reason}" if parity_reason else ""
        return Decision(False, f"int8 variant failed the parity gate{detail}", key, cand)
    lower = cfg.metric in LOWER_IS_BETTER
    if cfg.floor is not None and (cand > cfg.floor if lower else cand < cfg.floor):
        bound = "above the ceiling" if lower else "below the floor"
        return Decision(
            False, f"{candidate.name} {key} = {cand:.4f} is {bound} {cfg.floor}", key, cand
        )
    if champion is None:
        return Decision(True, f"no champion yet; {candidate.name} {key} = {cand:.4f}", key, cand)
    return _against_champion(candidate, champion, cfg, key)


def _against_champion(
    candidate: Scores, champion: Scores, cfg: PromotionConfig, key: str
) -> Decision:
    """Promote only a candidate better than the champion by more than the margin, same layers."""
    cand, champ = _value(candidate, key), _value(champion, key)
    if champion.eval_digest != candidate.eval_digest:
        return Decision(
            False,
            f"not comparable: {champion.name} was scored on evaluation set "
            f"{champion.eval_digest[:12]}, {candidate.name} on {candidate.eval_digest[:12]}",
            key,
            cand,
            champ,
        )
    lower = cfg.metric in LOWER_IS_BETTER
    gain = champ - cand if lower else cand - champ
    comparison = (
        f"{candidate.name} {key} = {cand:.4f} vs {champion.name} {champ:.4f} "
        f"({'lower' if lower else 'higher'} is better, margin {cfg.margin})"
    )
    if gain > cfg.margin:
        return Decision(True, f"beats the champion: {comparison}", key, cand, champ)
    return Decision(False, f"does not beat the champion: {comparison}", key, cand, champ)


@dataclass(frozen=True)
class Champion:
    """The registry's current champion, scored on a candidate's evaluation layers.

    Attributes:
        version: the registry version the ``champion`` alias points at (the int8 file).
        evaluation: its scores (of its fp32 sibling when one is registered).
    """

    version: str
    evaluation: Evaluation


def decide_promotion(
    candidate: Evaluation,
    champion: Champion | None,
    eval_digest: str,
    parity: Parity,
    cfg: PromotionConfig,
) -> Decision:
    """The gate on two evaluations of the same layers (the pipeline's promotion step).

    Both were scored by :func:`pbf_core.evaluation.scores.evaluate_model` on the layers whose
    digest is ``eval_digest``, so the champion is judged on the candidate's evaluation set
    whatever set it was first scored on.

    Args:
        candidate: the new model's evaluation.
        champion: the current champion scored on the same layers, or None.
        eval_digest: digest of those layers.
        parity: the candidate's int8 parity gate.
        cfg: metric, labels, margin, floor.
    """
    champ = None
    if champion is not None:
        champ = Scores(
            champion.evaluation.gate_metrics(), eval_digest, f"champion v{champion.version}"
        )
    return decide(
        Scores(candidate.gate_metrics(), eval_digest, "candidate"),
        champ,
        cfg,
        parity_passed=parity.passed,
        parity_reason=parity.reason,
    )
