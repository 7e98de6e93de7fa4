"""The run summary as Prefect artifacts: the summary, the candidate's scores, the decision."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pbf_core.summary import RunSummary, summary_markdown


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(summary: RunSummary) -> str:
    """Publish the run summary, the metrics table and the promotion decision as artifacts."""
    create_markdown_artifact(
        summary_markdown(summary), key="pbf-run-summary", description="key metrics"
    )
    create_table_artifact(
        [
            {"labels": k, **{m: round(v, 4) for m, v in s.items()}}
            for k, s in summary.scores.items()
        ],
        key="pbf-metrics",
        description="evaluation metrics of the candidate",
    )
    d, v = summary.decision, summary.versions
    return create_markdown_artifact(
        f"**{d.alias}** ({summary.registry} int8 v{v.int8}): {d.reason}",
        key="pbf-promotion",
        description="promotion decision",
    )
