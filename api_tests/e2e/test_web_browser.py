"""The web pages in a real headless Chromium: charts, live updates, the form, hostile names,
a report that works without JavaScript, and API docs that never leave the machine."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from api_tests.core.factories import make_record
from api_tests.e2e.browser import ServedApp, launch, served_app, watched_page
from api_tests.report_html.factories import HOSTILE, HOSTILE_ATTR, full_report
from api_tests.support.servers import server_missing
from api_tests.support.stacks import TrainedMLP, wait_for
from core.jobs.record import JobStatus
from core.jobs.report import Progress
from core.storage.protocols import REPORT
from stack.local import Stack

pytestmark = pytest.mark.e2e

BARS = """svg => [...svg.querySelectorAll('g.bar')].map(g => ({
    label: g.querySelector('text.label').textContent,
    value: Number(g.dataset.value),
    width: g.querySelector('rect.fill').getBBox().width,
    track: g.querySelector('rect.track').getBBox().width}))"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        try:
            browser = launch(playwright)
        except (RuntimeError, PlaywrightError) as exc:  # no chromium, or it would not start
            server_missing("chromium", exc)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    with served_app(tmp_path_factory.mktemp("web")) as served:
        yield served


def add_job(app: ServedApp, job_id: str, status: JobStatus = JobStatus.SUCCEEDED,
            report: dict[str, Any] | None = None, **fields: Any) -> str:
    now = datetime.now(UTC)
    if status is JobStatus.SUCCEEDED:
        fields = {"model_format": "torchscript", "model_sha256": "0" * 64,
                  "finished_at": now, **fields}
    app.store.create(make_record(now, job_id=job_id, status=status, started_at=now, **fields))
    if report is not None:
        write_report(app, job_id, report)
    return job_id


def write_report(app: ServedApp, job_id: str, report: dict[str, Any]) -> None:
    with app.blobs.writer(job_id, REPORT) as f:
        f.write(json.dumps(report).encode())


def test_report_page_charts_carry_the_reports_values(browser: Browser, app: ServedApp) -> None:
    report = full_report()
    job_id = add_job(app, "chart1", report=report)
    with watched_page(browser, signed_in=app.signed_in) as w:
        w.page.goto(f"{app.base_url}/jobs/{job_id}")
        bars = w.page.eval_on_selector("svg[data-chart=sparsity]", BARS)
        assert [(b["label"], b["value"]) for b in bars] == [
            (t["name"], t["sparsity"]) for t in report["tensors"]]
        for bar, tensor in zip(bars, report["tensors"], strict=True):  # drawn to scale
            assert bar["width"] == pytest.approx(tensor["sparsity"] * bar["track"], abs=0.02)
        accuracy = w.page.eval_on_selector("svg[data-chart=accuracy]", BARS)
        assert [b["value"] for b in accuracy] == [report["accuracy"][k]["accuracy"] for k in
                                                  ("before", "after_pruning", "after_finetune")]
        assert w.page.locator("svg[data-chart=sensitivity] polyline").count() == 3
        assert w.page.locator("svg[data-chart=search] circle").count() == 3
        assert w.page.locator("#cost").is_visible()
        assert w.errors == [] and w.dialogs == [] and w.off_machine() == []


def test_hostile_tensor_names_stay_text(browser: Browser, app: ServedApp) -> None:
    report = full_report(names=[HOSTILE, HOSTILE_ATTR])
    report["sensitivity"]["tensors"][0]["name"] = HOSTILE
    job_id = add_job(app, "hostile1", report=report)
    for path in (f"/jobs/{job_id}", f"/v1/jobs/{job_id}/report.html"):
        with watched_page(browser, signed_in=app.signed_in) as w:
            w.page.goto(app.base_url + path)
            labels = w.page.locator("svg[data-chart=sparsity] text.label").all_text_contents()
            assert labels[:2] == [HOSTILE, HOSTILE_ATTR], path
            cells = w.page.locator("#sparsity td.name").all_text_contents()
            assert cells[:2] == [HOSTILE, HOSTILE_ATTR], path
            legend = w.page.locator("#sensitivity .legend li").first.text_content()
            assert legend == HOSTILE, path
            # Nothing the names carry became markup: no script, no image, no handler ran.
            assert w.page.locator("script").count() == 0, path
            assert w.page.locator("img").count() == 0, path
            assert w.page.locator("[onmouseover], [onerror]").count() == 0, path
            assert w.dialogs == [] and w.errors == [], path


def test_static_report_works_without_javascript(browser: Browser, app: ServedApp) -> None:
    report = full_report()
    job_id = add_job(app, "static1", report=report)
    url = f"{app.base_url}/v1/jobs/{job_id}/report.html"
    with watched_page(browser, javascript=False, signed_in=app.signed_in) as w:
        w.page.goto(url)
        bars = w.page.locator("svg[data-chart=sparsity] g.bar")
        assert bars.count() == len(report["tensors"])
        assert w.page.locator("svg[data-chart=sparsity]").is_visible()
        assert w.requests == [url]  # the document itself, and nothing else
        assert w.errors == []


def test_live_page_follows_a_running_job(browser: Browser, app: ServedApp) -> None:
    job_id = add_job(app, "live1", JobStatus.RUNNING, progress=Progress(
        phase="finetuning", epoch=1, epochs=2, step=1, steps=10, loss=0.9))
    with watched_page(browser, signed_in=app.signed_in) as w:
        w.page.goto(f"{app.base_url}/jobs/{job_id}")
        phase = w.page.locator("#job-phase")
        assert "step 1/10" in (phase.text_content() or "")
        app.store.update(job_id, progress=Progress(phase="finetuning", epoch=2, epochs=2,
                                                   step=5, steps=10, loss=0.5))
        expect(phase).to_contain_text("epoch 2/2 · step 5/10", timeout=30_000)
        assert w.page.eval_on_selector("#job-progress", "p => p.value") == 0.75
        assert "loss 0.5000" in (phase.text_content() or "")
        report = full_report()
        write_report(app, job_id, report)
        app.store.transition(job_id, {JobStatus.RUNNING}, JobStatus.SUCCEEDED,
                             finished_at=datetime.now(UTC), model_format="torchscript",
                             model_sha256="0" * 64)
        # The page reloads when the job ends and shows the report the server renders.
        w.page.wait_for_selector("svg[data-chart=sparsity]", timeout=30_000)
        assert w.page.locator("#job-status").text_content() == "succeeded"
        assert w.page.locator("svg[data-chart=sparsity] g.bar").count() == 3
        assert w.errors == [] and w.off_machine() == []


def test_docs_render_operations_without_leaving_the_machine(browser: Browser,
                                                            app: ServedApp) -> None:
    with watched_page(browser, signed_in=app.signed_in) as w:
        w.page.goto(f"{app.base_url}/docs")
        w.page.wait_for_selector(".opblock", timeout=60_000)
        operations = {
            (m.lower(), p) for m, p in zip(
                w.page.locator(".opblock .opblock-summary-method").all_text_contents(),
                w.page.locator(".opblock .opblock-summary-path").all_text_contents(),
                strict=True)}
        spec = json.loads(w.page.evaluate("fetch('/openapi.json').then(r => r.text())"))
        expected = {(m, p) for p, item in spec["paths"].items() for m in item}
        assert {(m, p.replace("\u200b", "")) for m, p in operations} == expected
        assert ("get", "/v1/jobs/{job_id}/report.html") in expected
        assert w.requests and w.off_machine() == []
        assert all(u.startswith(app.base_url) for u in w.requests)
        assert w.errors == []


def test_the_form_shows_a_refusal_in_place_and_keeps_the_input(
    browser: Browser, app: ServedApp, tmp_path: Path
) -> None:
    """This app has no Redis: the submission is refused (503) and the page says so, with
    the file and the typed spec still there to send again."""
    model = tmp_path / "model.pt"
    model.write_bytes(b"PK\x03\x04 a model file")
    spec = '{"pruning": {"amount": 0.5}, "finetune": {"epochs": 0}}'
    with watched_page(browser, signed_in=app.signed_in) as w:
        w.page.goto(f"{app.base_url}/")
        w.page.set_input_files("#model", str(model))
        w.page.fill("#spec", spec)
        w.page.click("form.submit button[type=submit]")
        box = w.page.locator("#submit-error")
        expect(box).to_contain_text("Queue unavailable (503, broker_unavailable)", timeout=30_000)
        assert w.page.url == f"{app.base_url}/"
        assert w.page.input_value("#spec") == spec
        assert w.page.eval_on_selector("#model", "input => input.files.length") == 1
        # The browser logs the refused request itself; nothing else may fail.
        assert [e for e in w.errors if "status of 503" not in e] == []


def test_the_form_submits_a_job_that_the_page_follows_to_its_report(
    browser: Browser, stack: Stack, trained_mlp: TrainedMLP, tmp_path: Path
) -> None:
    """Against the real stack: the form sends the file and spec, the worker runs the job,
    the page follows it live and then shows the report's bars."""
    spec = {"pruning": {"method": "l1_unstructured", "scope": "layerwise", "amount": 0.4},
            "finetune": {"epochs": 0}}
    with watched_page(browser, signed_in=(stack.base_url, stack.api_key)) as w:
        w.page.goto(f"{stack.base_url}/")
        w.page.set_input_files("#model", str(trained_mlp.torchscript))
        w.page.fill("#spec", json.dumps(spec))
        w.page.click("form.submit button[type=submit]")
        w.page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]+$"))
        job_id = w.page.url.rsplit("/", 1)[1]
        wait_for(stack.client, job_id, timeout=120)
        w.page.wait_for_selector("svg[data-chart=sparsity]", timeout=30_000)
        report = stack.client.get(f"/v1/jobs/{job_id}/report").json()
        assert report["spec"]["pruning"]["amount"] == 0.4
        bars = w.page.eval_on_selector("svg[data-chart=sparsity]", BARS)
        assert [(b["label"], b["value"]) for b in bars] == [
            (t["name"], t["sparsity"]) for t in report["tensors"]]
        assert len(bars) == 3 and all(b["value"] == pytest.approx(0.4, abs=1e-3) for b in bars)
        assert w.errors == [] and w.off_machine() == []
        w.page.goto(f"{stack.base_url}/")
        assert w.page.locator(f"tr[data-job-id='{job_id}'] .status").text_content() == (
            "succeeded")


def test_signin_form_keeps_the_key_for_the_pages(browser: Browser, app: ServedApp) -> None:
    """Without a key the pages ask for one; a bad key is refused in place; a good one is kept
    in an HttpOnly cookie that the job pages (and their event streams) then send."""
    job_id = add_job(app, "signin1", report=full_report())
    with watched_page(browser) as w:
        w.page.goto(f"{app.base_url}/jobs/{job_id}")
        expect(w.page.locator("h1")).to_have_text("Sign in")
        w.page.fill("#key", "prn_live_000000000000_" + "x" * 43)
        w.page.click("#signin button[type=submit]")
        expect(w.page.locator("p.error")).to_contain_text("That key is not valid")
        w.page.fill("#key", app.key)
        w.page.click("#signin button[type=submit]")
        w.page.wait_for_url(f"{app.base_url}/jobs/{job_id}")
        w.page.wait_for_selector("svg[data-chart=sparsity]")
        cookie, = [c for c in w.page.context.cookies() if c["name"] == "pruner_key"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert w.page.evaluate("document.cookie") == ""  # invisible to scripts
        w.page.click("form.signout button[type=submit]")  # and signing out forgets it
        w.page.wait_for_url(f"{app.base_url}/signin")
        assert [c for c in w.page.context.cookies() if c["name"] == "pruner_key"] == []
        # The 401s of the sign-in page itself are the only errors the console shows.
        assert [e for e in w.errors if "status of 401" not in e] == []
