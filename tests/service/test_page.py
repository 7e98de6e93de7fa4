"""The web page in headless Chromium: upload a layer, see the overlay and the announced result; axe audit.

Needs Debian's ``chromium`` (``/usr/bin/chromium``, never a downloaded browser) and axe-core from
``npm ci`` in ``tests/service``; skipped when either is missing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.browser import audit, chromium
from service_support import layer, png_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, server, request):
    """The page in a fresh context; its Content-Security-Policy enforced unless the test asks
    (``indirect`` parameter True: the axe audit injects its script inline)."""
    bypass = getattr(request, "param", False)
    context = browser.new_context(bypass_csp=bypass)
    # Offline by design: any request outside the service (a CDN, fonts) fails the test.
    outside: list[str] = []
    context.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(server) or route.request.url.startswith("data:")
            else (outside.append(route.request.url), route.abort())
        ),
    )
    page = context.new_page()
    blocked: list[str] = []
    page.on(
        "console",
        lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.goto(server + "/")
    yield page
    context.close()
    assert not outside, f"the page requested outside resources: {outside}"
    assert not blocked, f"the page broke its own Content-Security-Policy: {blocked}"


def wait_for_model(page) -> None:
    """Wait until the page shows which model answers. A locator wait, not ``wait_for_function``:
    Playwright polls a string predicate with ``eval`` in the page, which the page's own CSP forbids
    (it passed when the text was already there and failed on a loaded machine)."""
    page.locator("#model-info").filter(has_text="version").wait_for(timeout=30_000)


def test_upload_shows_overlay_and_announces_result(page, tmp_path):
    rgb = np.stack([layer(seed=i) for i in range(3)], axis=2)
    upload = tmp_path / "layer.png"
    upload.write_bytes(png_bytes(rgb))
    wait_for_model(page)
    page.get_by_label("One image").check()
    page.get_by_label("Layer image").set_input_files(str(upload))
    page.get_by_role("button", name="Analyze layer").click()

    status = page.get_by_role("status")
    status.filter(has_text="Defect found").wait_for(timeout=30_000)
    assert page.locator("#status").get_attribute("aria-live") == "polite"
    overlay = page.get_by_role("img", name="Overlay of the analysed layer")
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert page.evaluate("document.getElementById('overlay').naturalWidth") == 128
    # focus moved to the result so keyboard and screen-reader users land on it
    assert page.evaluate("document.activeElement.id") == "result-heading"
    assert page.locator("#components tbody tr").count() == 1
    assert "(int8, run by " in page.locator("#facts").inner_text()  # which runtime answered


def test_triplet_mode_by_keyboard_and_missing_view_error(page, tmp_path):
    for v in "ab":
        (tmp_path / f"{v}.png").write_bytes(png_bytes(layer()))
    wait_for_model(page)
    page.get_by_label("A triplet (views a, b and c)").focus()
    page.keyboard.press("Space")
    assert page.get_by_label("View a").is_visible()
    assert not page.get_by_label("Layer image").is_visible()
    page.get_by_label("View a").set_input_files(str(tmp_path / "a.png"))
    page.get_by_label("View b").set_input_files(str(tmp_path / "b.png"))
    page.get_by_role("button", name="Analyze layer").press("Enter")
    page.get_by_role("alert").filter(has_text="Choose view c first").wait_for(timeout=10_000)
    assert page.evaluate("document.activeElement.id") == "file-c"
    assert page.get_by_label("View c").get_attribute("aria-invalid") == "true"


def test_server_error_is_announced(page, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    wait_for_model(page)
    page.get_by_label("One image").check()
    page.get_by_label("Layer image").set_input_files(str(bad))
    page.get_by_role("button", name="Analyze layer").click()
    page.get_by_role("alert").filter(has_text="not a recognised image").wait_for(timeout=30_000)
    assert "could not be analysed" in page.locator("#status").inner_text()


@pytest.mark.parametrize("page", [True], indirect=True, ids=["csp-bypassed-for-axe"])
def test_axe_finds_no_serious_violations(page, tmp_path):
    wait_for_model(page)
    before = audit(page)
    upload = tmp_path / "layer.png"
    upload.write_bytes(png_bytes(np.stack([layer(seed=i) for i in range(3)], axis=2)))
    page.get_by_label("One image").check()
    page.get_by_label("Layer image").set_input_files(str(upload))
    page.get_by_role("button", name="Analyze layer").click()
    page.locator("#status").filter(has_text="Defect found").wait_for(timeout=30_000)
    after = audit(page)
    assert not before and not after, json.dumps({"before": before, "after": after}, indent=1)
