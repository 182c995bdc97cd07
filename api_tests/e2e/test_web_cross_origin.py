"""Cross-origin writes in a real Chromium: a page served from another port of the same host
(the same "site" to a browser, so the SameSite=Strict cookie goes along) cannot cancel a job
through the signed-in browser, neither with a self-submitting form nor with fetch; the
service's own pages still can."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from api_tests.core.factories import make_record
from api_tests.e2e.browser import ServedApp, launch, served_app, watched_page
from core.jobs.record import JobStatus

pytestmark = pytest.mark.e2e

FORM = """<!doctype html><form method="post" action="{action}"></form>
<script>document.forms[0].submit()</script>"""
FETCH = """<!doctype html><script>
fetch("{action}", {{method: "POST", credentials: "include", mode: "no-cors"}})
  .then(() => document.title = "sent", () => document.title = "sent");</script>"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    with served_app(tmp_path_factory.mktemp("web")) as served:
        yield served


@contextmanager
def hostile_site(html: str) -> Iterator[str]:
    """Another origin on this machine (127.0.0.1, another port) serving ``html``."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def queued_job(app: ServedApp, job_id: str) -> str:
    app.store.create(make_record(datetime.now(UTC), job_id=job_id))
    return job_id


def status(app: ServedApp, job_id: str) -> JobStatus:
    record = app.store.get(job_id)
    assert record is not None
    return record.status


def sign_in(w: Any, app: ServedApp) -> None:
    """Through the sign-in form: the cookie exactly as the service sets it."""
    w.page.goto(f"{app.base_url}/signin")
    w.page.fill("#key", app.key)
    w.page.click("#signin button[type=submit]")
    w.page.wait_for_url(f"{app.base_url}/")


@pytest.mark.parametrize("template", [FORM, FETCH], ids=["form", "fetch"])
def test_a_page_on_another_port_cannot_cancel_a_job(
    browser: Browser, app: ServedApp, template: str
) -> None:
    job_id = queued_job(app, f"xsite-{len(template)}")
    action = f"{app.base_url}/v1/jobs/{job_id}/cancel"
    seen: list[int] = []
    with watched_page(browser) as w, hostile_site(template.format(action=action)) as evil:
        sign_in(w, app)
        w.page.on("response", lambda r: seen.append(r.status) if r.url == action else None)
        with w.page.expect_response(action):
            w.page.goto(evil)
    # 403, not 401: the browser did send the cookie (before the fix this cancelled the job).
    assert seen == [403]
    assert status(app, job_id) == JobStatus.QUEUED


def test_the_services_own_page_can_cancel_a_job(browser: Browser, app: ServedApp) -> None:
    job_id = queued_job(app, "same-origin")
    with watched_page(browser) as w:
        sign_in(w, app)
        code = w.page.evaluate(
            f"fetch('/v1/jobs/{job_id}/cancel', {{method: 'POST'}}).then(r => r.status)")
    assert code == 200
    assert status(app, job_id) == JobStatus.CANCELLED
