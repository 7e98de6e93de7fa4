"""Build scoring on Dask: a LocalCluster, and a scheduler and workers started as separate
``dask scheduler`` / ``dask worker`` processes on 127.0.0.1 — the same tables as in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pbf_core.scoring.build import score_build
from pbf_core.scoring.runners import Runner

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def model(untrained_model):
    return untrained_model


@pytest.fixture(scope="module")
def local(model, synthetic_build, tmp_path_factory):
    return score_build(synthetic_build, model, tmp_path_factory.mktemp("local"))


def _same(a, b):
    """The same rows and defects (peaks to float rounding: thread counts differ)."""
    floats = ("seconds", "max_prob")
    strip = lambda r: {k: v for k, v in r.items() if k not in floats}  # noqa: E731
    rows_a, rows_b = ([strip(s.score.__dict__) for s in x.layers] for x in (a, b))
    assert rows_a == rows_b
    peaks_a, peaks_b = ([s.score.max_prob for s in x.layers] for x in (a, b))
    assert peaks_a == pytest.approx(peaks_b, abs=1e-5)
    assert [strip(d.to_dict()) for d in a.defects] == [strip(d.to_dict()) for d in b.defects]


def test_a_local_dask_cluster_gives_the_same_tables(model, synthetic_build, local, tmp_path):
    result = score_build(synthetic_build, model, tmp_path, runner=Runner("dask", workers=2))
    _same(result, local)
    assert result.scored == len(result.layers)


@pytest.fixture
def cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on loopback; yields the address."""
    from helpers.processes import dask_cluster

    with dask_cluster(BIN, tmp_path) as address:
        assert address.startswith("tcp://127.0.0.1:")
        yield address


def test_separately_started_scheduler_and_workers(model, synthetic_build, local, cluster, tmp_path):
    result = score_build(synthetic_build, model, tmp_path, runner=Runner("dask", address=cluster))
    _same(result, local)
    again = score_build(synthetic_build, model, tmp_path, runner=Runner("dask", address=cluster))
    assert (again.scored, again.reused) == (0, len(result.layers))


@pytest.mark.parametrize(("kw", "message"), [
    ({"kind": "spark"}, "unknown runner"), ({"kind": "dask", "workers": 0}, "at least 1"),
    ({"kind": "dask", "address": "localhost:8786"}, "tcp://HOST:PORT"),
])  # fmt: skip
def test_bad_runner_settings_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        Runner(**kw)
