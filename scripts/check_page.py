"""Check a running service's web page in headless Chromium, as a user would use it.

Opens the page, waits for the model to be announced, uploads one layer (an a/b/c triplet or a
single image), presses "Analyze layer" and checks what a user sees: the result announced in
the ARIA live region, focus moved to the result, an overlay image as large as the layer, and a
component row per reported defect. Prints what it saw; exits 1 on any failure.

    make run && make serve &                                   # train, then serve the champion
    .venv/bin/python scripts/check_page.py --url http://localhost:3000 \\
        --triplet .pbf/data/raw/synthetic-*/images/B0005{a,b,c}.PNG

Needs Playwright (a dev dependency) and Debian's ``chromium`` (``/usr/bin/chromium``); it never
downloads a browser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def check(url: str, files: list[Path], timeout_s: float) -> list[str]:
    """Drive the page; returns the problems found (empty when the page works)."""
    from playwright.sync_api import Error, sync_playwright

    from pbf_core.data.imaging import read_image

    problems: list[str] = []
    width = read_image(files[0]).shape[1]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.goto(url.rstrip("/") + "/")
            page.wait_for_function(
                "document.getElementById('model-info').textContent.includes('version')",
                timeout=timeout_s * 1000,
            )
            print("model:", page.locator("#model-info").inner_text().strip())
            if len(files) == 3:
                page.get_by_label("A triplet (views a, b and c)").check()
                for view, path in zip("abc", files, strict=True):
                    page.get_by_label(f"View {view}").set_input_files(str(path))
            else:
                page.get_by_label("One image").check()
                page.get_by_label("Layer image").set_input_files(str(files[0]))
            page.get_by_role("button", name="Analyze layer").click()
            status = page.locator("#status")
            try:
                status.filter(has_text="efect").wait_for(timeout=timeout_s * 1000)
            except Error:
                problems.append(f"no result announced; status says {status.inner_text()!r}")
                return problems
            print("announced:", status.inner_text().strip())
            if status.get_attribute("aria-live") != "polite":
                problems.append("the status region is not an ARIA live region")
            focused = page.evaluate("document.activeElement.id")
            if focused != "result-heading":
                problems.append(f"focus is on {focused!r}, not on the result")
            overlay = page.get_by_role("img", name="Overlay of the analysed layer")
            shown = page.evaluate("document.getElementById('overlay').naturalWidth")
            if not (overlay.get_attribute("src") or "").startswith("data:image/png"):
                problems.append("no overlay image")
            elif shown != width:
                problems.append(f"overlay is {shown} px wide, the layer {width} px")
            rows = page.locator("#components tbody tr").count()
            print(f"overlay: {shown} px wide; component rows: {rows}")
            if "Defect found" in status.inner_text() and rows == 0:
                problems.append("a defect was announced but no component is listed")
        finally:
            browser.close()
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:3000")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--triplet", type=Path, nargs=3, metavar=("A", "B", "C"))
    group.add_argument("--image", type=Path)
    parser.add_argument("--timeout", type=float, default=120, help="seconds per wait")
    args = parser.parse_args()
    files = list(args.triplet) if args.triplet else [args.image]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if not CHROMIUM.is_file():
        print("error: /usr/bin/chromium missing (apt-get install chromium)", file=sys.stderr)
        return 2
    problems = check(args.url, files, args.timeout)
    for p in problems:
        print("FAIL:", p, file=sys.stderr)
    print("page check:", "FAILED" if problems else "passed")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
