"""`score_build`: every layer of a build scored into parquet tables, resumable, bad layers as rows."""

from __future__ import annotations

import json
import shutil

import pytest

from pbf_core.errors import CheckpointError, DatasetError
from pbf_core.scoring.build import score_build


@pytest.fixture(scope="module")
def model(untrained_model):
    return untrained_model


def _tables(out):
    import pyarrow.parquet as pq

    return {
        n: pq.read_table(out / f"{n}.parquet").to_pylist()
        for n in ("layers", "components", "defects")
    }


@pytest.fixture(scope="module")
def scored(model, synthetic_build, tmp_path_factory):
    build = tmp_path_factory.mktemp("b") / "raw"
    shutil.copytree(synthetic_build, build)
    out = tmp_path_factory.mktemp("scored")
    return build, out, score_build(build, model, out)


def test_every_layer_is_a_row_and_unusable_ones_say_why(scored, synthetic_build):
    _, out, result = scored
    manifest = json.loads((synthetic_build / "manifest.json").read_text())
    tables = _tables(out)
    assert len(tables["layers"]) == len(manifest["layers"]) == len(result.layers)
    unusable = [r for r in tables["layers"] if not r["usable"]]
    assert unusable and all(r["reason"] and r["defect_pixels"] == 0 for r in unusable)
    usable = [r for r in tables["layers"] if r["usable"]]
    for row in usable:
        mask = out / "masks" / f"{row['layer']}.png"
        assert (
            mask.is_file()
            and row["truth_pixels"] is not None
            and row["model"] == "model.safetensors"
        )
    assert sum(r["components"] for r in usable) == len(tables["components"])


def test_components_carry_their_3d_defect(scored):
    _, out, result = scored
    tables = _tables(out)
    ids = {c["defect_id"] for c in tables["components"]}
    assert ids == {d["id"] for d in tables["defects"]} == set(range(len(result.defects)))
    for d in tables["defects"]:
        mine = [c for c in tables["components"] if c["defect_id"] == d["id"]]
        assert d["voxels"] == sum(c["area"] for c in mine)
        assert (d["z_min"], d["z_max"]) == (min(c["z"] for c in mine), max(c["z"] for c in mine))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["defects"] == len(tables["defects"]) and summary["scored"] == len(result.layers)


def test_a_rerun_scores_nothing_twice_and_adds_no_row(scored, model):
    build, out, first = scored
    again = score_build(build, model, out)
    assert (again.scored, again.reused) == (0, len(first.layers))
    rows = _tables(out)["layers"]
    assert len(rows) == len(first.layers) and len({r["layer"] for r in rows}) == len(rows)
    assert [d.to_dict() for d in again.defects] == [d.to_dict() for d in first.defects]


def test_a_corrupt_layer_is_a_row_and_only_it_is_scored_again(scored, model):
    build, out, first = scored
    usable = [s.score.layer for s in first.layers if s.score.usable]
    victim = next((build / "images").glob(f"{usable[0]}a.*"))
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    again = score_build(build, model, out)
    row = next(s.score for s in again.layers if s.score.layer == usable[0])
    assert not row.usable and row.reason.startswith("unreadable")
    assert again.scored == 1 and again.reused == len(first.layers) - 1


def test_bad_builds_and_models_are_clear_errors(model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        score_build(tmp_path / "empty", model, tmp_path / "o")
    with pytest.raises(CheckpointError, match="not found"):
        score_build(tmp_path / "empty", tmp_path / "nope.safetensors", tmp_path / "o")


def test_pbf_score_prints_the_verdict_and_names_unusable_layers(model, synthetic_build, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    pbf = Path(sys.executable).parent / "pbf"
    import os

    db = f"sqlite:///{tmp_path / 'r.db'}"
    env = {**os.environ, "PBF_STATE_DIR": str(tmp_path / "state")}
    env.pop("PBF_TRACKING_URI", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    args = [str(pbf), "score", str(synthetic_build), "--out", str(tmp_path), "--database", db,
            "--model", str(model)]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] in out.stdout
    assert all(f"unusable {layer}: " in out.stdout for layer in summary["unusable"])
    assert f"database: {summary['layers']} layer rows, {summary['defects']} defects" in out.stdout
    assert "MLflow run " in out.stdout and (tmp_path / "state" / "mlflow").is_dir()
    missing = subprocess.run(
        [*args[:-1], str(tmp_path / "nope.onnx")], capture_output=True, text=True, timeout=600
    )
    assert missing.returncode == 2 and "nope.onnx" in missing.stderr


def test_results_go_to_sql_and_a_rerun_duplicates_nothing(scored, tmp_path):
    import sqlalchemy as sa

    from pbf_core.scoring.database import upsert_build

    build, _, result = scored
    url = f"sqlite:///{tmp_path / 'results.db'}"
    first = upsert_build(url, str(build), result, "model.safetensors")
    again = upsert_build(url, str(build), result, "model.safetensors")
    other = upsert_build(url, "/another/build", result, "model.safetensors")
    assert first == again == other
    assert first["pbf_layers"] == len(result.layers) and first["pbf_defects"] == len(result.defects)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(sa.text("select count(*) from pbf_layers")).scalar()
        ids = conn.execute(
            sa.text("select count(distinct defect_id) from pbf_components where build = :b"),
            {"b": str(build)},
        ).scalar()
    engine.dispose()
    assert count == 2 * len(result.layers) and ids == len(result.defects)


def test_pbf_score_without_a_model_and_no_champion_says_so(synthetic_build, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PBF_STATE_DIR": str(tmp_path / "state")}
    env.pop("PBF_TRACKING_URI", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    pbf = Path(sys.executable).parent / "pbf"
    out = subprocess.run([str(pbf), "score", str(synthetic_build), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert out.returncode == 2 and "no champion yet" in out.stderr


def test_the_results_database_is_sqlite_in_the_state_dir_unless_set(monkeypatch, tmp_path):
    from pbf_core.config import Settings

    monkeypatch.setenv("PBF_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("PBF_RESULTS_DB", raising=False)
    assert Settings().results_url() == f"sqlite:///{tmp_path.resolve() / 'results.db'}"
    monkeypatch.setenv("PBF_RESULTS_DB", "postgresql+psycopg2://u@db:5432/pbf_results")
    assert Settings().results_url() == "postgresql+psycopg2://u@db:5432/pbf_results"
