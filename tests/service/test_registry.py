"""From the registry: ``pbf package`` resolves ``@champion`` (and its fp32 sibling) from a tracking
store, and the service loads straight from a tracking store with ``PBF_SERVE_SOURCE=tracking``.

The registry is a local SQLite MLflow store holding the tiny model's two ONNX files as versions of
``pbf-defect-segmenter`` with the aliases the pipeline sets.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from service_support import REPO, bentoml_env, export_tiny_pair

pytestmark = pytest.mark.integration

REGISTER = textwrap.dedent(
    """
    import sys, warnings
    import mlflow, mlflow.onnx, onnx
    warnings.simplefilter("ignore")
    uri, int8, fp32 = sys.argv[1:4]
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri, uri)
    client.create_registered_model("pbf-defect-segmenter")
    with mlflow.start_run() as run:
        for variant, path in (("fp32", fp32), ("int8", int8)):
            info = mlflow.onnx.log_model(onnx.load_model(path), name=variant)
            mv = client.create_model_version(
                "pbf-defect-segmenter", info.model_uri, run_id=run.info.run_id,
                tags={"variant": variant},
            )
            alias = "champion" if variant == "int8" else "champion-fp32"
            client.set_registered_model_alias("pbf-defect-segmenter", alias, mv.version)
    """
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """Tracking URI of a SQLite store whose ``@champion`` is the tiny int8 model (v2), fp32 v1."""
    work = tmp_path_factory.mktemp("registry")
    files = export_tiny_pair(work)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "-c", REGISTER, uri, str(files["int8"]), str(files["fp32"])],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return uri


def test_package_champion_from_registry(registry, tmp_path):
    env = bentoml_env(tmp_path / "bentoml", PBF_TRACKING_URI=registry)
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "package"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "packaged pbf-defect-segmenter:r2-1-" in done.stdout
    code = (
        "import bentoml; m = bentoml.models.get('pbf-defect-segmenter:latest'); "
        "meta = m.info.metadata; print(meta['source'], meta['variants']['int8']['version'], "
        "meta['variants']['fp32']['version'], meta['spec']['threshold'])"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.stdout.split() == ["models:/pbf-defect-segmenter@champion", "2", "1", "0.5"]


@pytest.mark.parametrize(("variant", "version"), [("int8", "2"), ("fp32", "1")])
def test_service_loads_from_tracking_store(registry, tmp_path, variant, version):
    code = (
        "import pathlib, service; "
        "m = service._from_tracking(service.SETTINGS, pathlib.Path(r'%s')); "
        "print(m.info['version'], m.info['variant'], m.info['source'], m.spec.threshold)"
    ) % (tmp_path / "download")
    env = bentoml_env(
        tmp_path / "bentoml",
        PBF_TRACKING_URI=registry,
        PBF_SERVE_SOURCE="tracking",
        PBF_SERVE_VARIANT=variant,
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    alias = "champion" if variant == "int8" else "champion-fp32"
    assert done.stdout.split() == [version, variant, f"models:/pbf-defect-segmenter@{alias}", "0.5"]


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        pytest.param(None, "needs PBF_TRACKING_URI or MLFLOW_TRACKING_URI", id="no-tracking-uri"),
        pytest.param("empty", "has no version with the alias @champion", id="no-alias"),
    ],
)
def test_tracking_source_without_a_champion_says_why(tmp_path, uri, words):
    code = (
        "import pathlib, service\n"
        "try:\n"
        "    service._from_tracking(service.SETTINGS, pathlib.Path(r'%s'))\n"
        "except service.ModelNotReadyError as exc:\n"
        "    print(exc)\n"
    ) % (tmp_path / "download")
    extra = {"PBF_SERVE_SOURCE": "tracking", "PBF_STATE_DIR": str(tmp_path / "state")}
    if uri:
        extra["PBF_TRACKING_URI"] = f"sqlite:///{tmp_path / 'empty.db'}"
    env = bentoml_env(tmp_path / "bentoml", **extra)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert words in done.stdout
