"""The build report in headless Chromium: offline, no console errors, axe clean, right numbers.

Needs Debian's ``chromium`` and axe-core from ``npm ci`` in ``tests/service``; skipped without.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pbf_core.model.checkpoints import save_checkpoint
from pbf_core.model.factory import model_from_spec
from pbf_core.model.spec import ModelSpec
from pbf_core.scoring.build import score_build

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).resolve().parents[1] / "service" / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="module")
def report(synthetic_build, tmp_path_factory) -> Path:
    import torch

    spec = ModelSpec(decoder_channels=(16, 16, 8, 8, 8), head_width=8, tile_size=64,
                     tile_overlap=8, threshold=0.3)  # fmt: skip
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("report")
    model = save_checkpoint(root / "model.safetensors", model_from_spec(spec), spec)
    score_build(synthetic_build, model, root / "out")
    return root / "out"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        yield chromium
        chromium.close()


def test_report_is_self_contained_accessible_and_shows_the_numbers(report, browser):
    numbers = json.loads((report / "report.json").read_text())
    context = browser.new_context()
    outside, errors = [], []
    context.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:"))
                  else (outside.append(r.request.url), r.abort()))  # fmt: skip
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((report / "report.html").as_uri())
    assert page.get_by_role("heading", level=1).inner_text().startswith("Build report")
    assert page.locator(".verdict").inner_text() == numbers["verdict"]
    facts = page.get_by_role("table", name="The build in numbers").inner_text()
    assert f"usable\t{numbers['usable']}" in facts and f"3D defects\t{numbers['defects']}" in facts
    area = page.get_by_role("table", name="Defect area per usable layer").locator("tbody tr")
    assert area.count() == numbers["usable"]
    for img in page.get_by_role("img").all():
        assert img.get_attribute("alt") or img.get_attribute("aria-labelledby"), img
    if not AXE.is_file():
        pytest.skip(f"axe-core not installed ({AXE}); run `npm ci` in tests/service")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document)")
    bad = [v["id"] for v in result["violations"] if v["impact"] in ("serious", "critical")]
    context.close()
    assert not bad and not errors and not outside, (bad, errors, outside)
