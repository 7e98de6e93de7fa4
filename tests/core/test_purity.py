"""pbf_core stays pure: importing every module pulls in no orchestration, tracking or serving."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pbf_core


def test_importing_pbf_core_imports_no_prefect_mlflow_bentoml():
    modules = [m.name for m in pkgutil.walk_packages(pbf_core.__path__, "pbf_core.")]
    assert {"pbf_core.data.imaging", "pbf_core.deploy.runtimes", "pbf_core.serving"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'prefect', 'mlflow', 'bentoml'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
