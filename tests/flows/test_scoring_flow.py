"""The score-build flow under a Prefect test server: in-process and on a Dask LocalCluster
(prefect-dask), the same tables as ``pbf score``; a markdown artifact links the report."""

from __future__ import annotations

import pytest

from pbf_core.scoring.build import score_build as score_build_step

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def model(untrained_model):
    return untrained_model


@pytest.fixture(scope="module")
def reference(model, synthetic_build, tmp_path_factory):
    return score_build_step(synthetic_build, model, tmp_path_factory.mktemp("ref"))


def _rows(result_layers):
    return [
        (s.score.layer, s.score.usable, s.score.reason, s.score.defect_pixels)
        for s in result_layers
    ]


@pytest.mark.parametrize("runner", ["local", "dask", "dask-address"])
def test_flow_scores_like_the_command(prefect_harness, state_dir, model, synthetic_build,
                                      reference, tmp_path, runner):  # fmt: skip
    """In-process, on a LocalCluster, and on a scheduler and workers started as processes."""
    import contextlib
    import json
    import sys
    from pathlib import Path

    from helpers.processes import dask_cluster
    from prefect.client.orchestration import get_client

    from flows.scoring import score_build

    out = tmp_path / runner
    with contextlib.ExitStack() as stack:
        address = ""
        if runner == "dask-address":
            address = stack.enter_context(dask_cluster(Path(sys.executable).parent, tmp_path))
        kind = runner.removesuffix("-address")
        summary = score_build(str(synthetic_build), model=str(model), out=str(out), runner=kind,
                              dask_address=address, workers=2)  # fmt: skip
    assert summary["verdict"] == reference.summary()["verdict"]
    assert json.loads((out / "summary.json").read_text())["defects"] == len(reference.defects)
    assert (out / "report.html").is_file() and summary["scored"] == len(reference.layers)

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    import asyncio

    latest = [a for a in asyncio.run(artifact()) if a.key == "build-score"]
    assert latest and "report.html" in latest[0].data

    from tasks.tracking.store import client

    run = client().get_run(summary["mlflow_run_id"])
    assert run.data.params["runner"] == kind and run.info.status == "FINISHED"
    assert (
        run.data.metrics["layers"] == len(reference.layers) and run.data.metrics["layers_per_s"] > 0
    )
    assert run.data.metrics["flagged_layers"] == len(reference.flagged)
    listed = {a.path for a in client().list_artifacts(run.info.run_id, "report")}
    assert "report/report.html" in listed

    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{state_dir / 'results.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select count(*) from pbf_layers where build = :b"),
                            {"b": str(synthetic_build.resolve())}).scalar()  # fmt: skip
    engine.dispose()
    assert rows == len(reference.layers)  # upserted: the second runner replaced the first's rows
