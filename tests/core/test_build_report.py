"""The build report in headless Chromium: offline, no console errors, axe clean, right numbers.

Needs Debian's ``chromium`` and axe-core from ``npm ci`` in ``tests/service``; skipped without.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.browser import audit, chromium

from pbf_core.scoring.build import score_build

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(synthetic_build, untrained_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    score_build(synthetic_build, untrained_model, out)
    return out


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


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
    bad = [v["id"] for v in audit(page)]
    context.close()
    assert not bad and not errors and not outside, (bad, errors, outside)
