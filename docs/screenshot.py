"""Make docs/report-page.png: a report's page, rendered by report_html, in headless chromium.

    .venv/bin/prune-model mlp.pt --html -o out/        # a real run's report
    .venv/bin/python docs/screenshot.py out/report.json docs/report-page.png

Uses Debian's chromium (apt-get install chromium) through Playwright, as the browser tests do.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from report_html import render_report


def main(report_path: Path, png: Path, height: int = 1250) -> None:
    page_html = render_report(json.loads(report_path.read_text()),
                              subtitle=f"From {report_path.name}")
    chromium = shutil.which("chromium") or "chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": height})
        page.set_content(page_html)
        page.screenshot(path=str(png))  # the first screenful: cards, bars, accuracy
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "docs/report-page.png"))
