"""``bentoml build``: a bento with the packaged model, the page and no torch; packaging errors."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from service_support import REPO, bentoml_env


def run(cmd: list[str], home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=REPO, env=bentoml_env(home), capture_output=True, text=True, timeout=timeout
    )


def test_service_import_chain_has_no_torch(tmp_path):
    """Serving ONNX must not need torch: importing the service (and pbf_core's inference) must not load it."""
    code = (
        "import sys, service; "
        "heavy = sorted(m for m in ('torch', 'prefect', 'mlflow', 'segmentation_models_pytorch') "
        "if m in sys.modules); print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = run([sys.executable, "-c", code], tmp_path / "home", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_tracking_source_import_chain_has_no_prefect_or_torch(tmp_path):
    """The bento carries ``tasks/tracking/`` for ``PBF_SERVE_SOURCE=tracking``, not Prefect or torch."""
    code = (
        "import sys, tasks.tracking.registry, tasks.tracking.store; "
        "heavy = sorted(m for m in ('torch', 'prefect', 'segmentation_models_pytorch') "
        "if m in sys.modules); print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = run([sys.executable, "-c", code], tmp_path / "home", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
def test_bentoml_build_carries_model_page_and_no_torch(bentoml_home, tmp_path):
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    built = run([bentoml, "build", str(REPO), "--output", "tag"], bentoml_home)
    assert built.returncode == 0, built.stdout + built.stderr
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("pbf_defect_segmenter:"), built.stdout

    exported = tmp_path / "bento.bento"
    done = run([bentoml, "export", tag, str(exported)], bentoml_home)
    assert done.returncode == 0, done.stdout + done.stderr
    with tarfile.open(exported) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        requirements = tar.extractfile(members["env/python/requirements.txt"]).read().decode()
    names = set(members)
    for needed in ("src/service.py", "src/static/index.html", "src/static/app.js"):
        assert needed in names
    for module in ("pbf_core/deploy/inference.py", "pbf_core/serving/segmentation.py"):
        assert f"src/{module}" in names
    # PBF_SERVE_SOURCE=tracking: the one registry download, without Prefect's tasks
    assert {"src/tasks/__init__.py", "src/tasks/tracking/registry.py"} <= names
    assert "src/tasks/registry.py" not in names
    models = {n for n in names if n.startswith("models/pbf-defect-segmenter/")}
    assert any(n.endswith("/int8.onnx") for n in models), sorted(names)
    assert any(n.endswith("/fp32.onnx") for n in models)
    packages = {
        line.split("=")[0].split(">")[0].strip().lower() for line in requirements.splitlines()
    }
    assert {"onnxruntime", "openvino"} <= packages
    pinned = [ln for ln in requirements.splitlines() if ln.strip() and not ln.startswith("#")]
    assert all("==" in ln for ln in pinned), "every package of the bento is pinned"
    assert not packages & {"torch", "torchvision", "segmentation-models-pytorch", "timm"}


def _requirements(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and ln[0] != "#"]


def test_serving_lock_pins_every_requirement():
    """``docker/bento-requirements.lock`` (the image's packages) pins each package of the ``.in``
    file to a version its range allows, and holds nothing but exact pins."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = {}
    for line in _requirements(REPO / "docker" / "bento-requirements.lock"):
        name, sep, version = line.partition("==")
        assert sep and version and not any(c in version for c in "<>=!~,; "), line
        lock[canonicalize_name(name)] = version
    for line in _requirements(REPO / "docker" / "bento-requirements.in"):
        need = Requirement(line)
        if need.name == "bentoml":  # BentoML pins itself in every bento
            assert "bentoml" not in lock
            continue
        assert canonicalize_name(need.name) in lock, f"{need.name} is not in the lock"
        assert need.specifier.contains(lock[canonicalize_name(need.name)]), line
    assert not {"torch", "torchvision", "prefect"} & set(lock)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["--int8", "missing.onnx"], "int8 ONNX file not found", id="missing-file"),
        pytest.param(["--int8", "pyproject.toml"], "not a readable ONNX file", id="not-onnx"),
    ],
)
def test_package_refuses_bad_files(tmp_path, args, words):
    done = run([sys.executable, "-m", "flows.cli", "package", *args], tmp_path / "home", 120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr.replace("\n", " ")


def test_package_without_registry_champion_says_so(tmp_path):
    env_home = tmp_path / "home"
    cmd = [sys.executable, "-m", "flows.cli", "package"]
    done = subprocess.run(
        cmd,
        cwd=REPO,
        env=bentoml_env(env_home, PBF_STATE_DIR=str(tmp_path / "state")),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "@champion" in done.stderr and "no model version has this alias" in done.stderr


@pytest.mark.integration
@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_variant_selected_by_environment(bentoml_home, variant):
    code = (
        "import service; m = service._from_store(service.SETTINGS); "
        "print(m.path.name, m.info['variant'], m.spec.threshold)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=bentoml_env(bentoml_home, PBF_SERVE_VARIANT=variant),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"{variant}.onnx", variant, "0.5"]
