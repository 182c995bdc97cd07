"""The HTML pages in-process: job list, job page, form, offline report, self-hosted docs."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from html import unescape

from api_tests.core.factories import make_record
from api_tests.report_html.factories import HOSTILE, full_report, target_report
from api_tests.service.factories import NOW, finished_job
from api_tests.support.api import REFERENCE, Api, ModelFiles
from api_tests.support.problems import assert_problem
from core.jobs.error_codes import JobErrorCode
from core.jobs.record import JobError, JobStatus
from core.jobs.report import Progress
from core.storage.protocols import REPORT

RUNNING = Progress(phase="finetuning", epoch=2, epochs=2, step=469, steps=938, loss=0.1234)


def store_report(api: Api, job_id: str, report: object) -> None:
    with api.blobs.writer(job_id, REPORT) as f:
        f.write(json.dumps(report).encode())


def row(html: str, job_id: str) -> str:
    return html.split(f'data-job-id="{job_id}"', 1)[1].split("</tr>", 1)[0]


def test_index_lists_jobs_with_progress_sparsity_and_accuracy(api: Api) -> None:
    finished_job(api, "done1")
    store_report(api, "done1", full_report())
    finished_job(api, "odd1")  # its report has none of the fields: dashes, not an error
    api.store.create(make_record(NOW + timedelta(seconds=1), job_id="run1",
                                 status=JobStatus.RUNNING, progress=RUNNING))
    response = api.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    html = response.text
    assert html.index('data-job-id="run1"') < html.index('data-job-id="done1"')  # newest first
    done = row(html, "done1")
    assert "32.0%" in done and "97.12% → 97.81%" in done and 'class="status succeeded"' in done
    running = row(html, "run1")
    assert 'value="0.75"' in running  # epoch 2 of 2, half way: 3/4 of fine-tuning
    assert "finetuning · epoch 2/2 · step 469/938 · loss 0.1234" in running
    assert row(html, "odd1").count("—") == 2


def test_index_filters_by_status_and_pages(api: Api) -> None:
    for i in range(52):
        api.store.create(make_record(NOW + timedelta(seconds=i), job_id=f"q{i:02d}"))
    api.store.create(make_record(NOW, job_id="f1", status=JobStatus.FAILED,
                                 error=JobError(code=JobErrorCode.INVALID_MODEL, message="x")))
    first = api.client.get("/").text
    assert first.count("<tr data-job-id=") == 50
    [next_url] = re.findall(r'href="(/\?cursor=[^"]+)" rel="next"', first)
    rest = api.client.get(next_url.replace("&amp;", "&")).text
    assert rest.count("<tr data-job-id=") == 3
    failed = api.client.get("/?status=failed").text
    assert failed.count("<tr data-job-id=") == 1 and "invalid_model" in failed


def test_job_page_shows_the_report_with_names_as_text(api: Api) -> None:
    finished_job(api, "ok1")
    store_report(api, "ok1", full_report(names=[HOSTILE]))
    html = api.client.get("/jobs/ok1").text
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count('<g class="bar"') == 3 + 3 + 6  # tensors, accuracy stages, phases
    assert {"cost", "sensitivity", "search"} <= set(re.findall(r'<section id="(\w+)"', html))
    assert 'href="/v1/jobs/ok1/report.html"' in html
    assert "/static/web/job.js" not in html  # a finished job needs no live updates


def test_job_page_while_running_and_when_failed(api: Api) -> None:
    api.store.create(make_record(NOW, job_id="r1", status=JobStatus.RUNNING, progress=RUNNING))
    html = api.client.get("/jobs/r1").text
    assert '<script src="/static/web/job.js" defer></script>' in html
    assert 'data-events="/v1/jobs/r1/events"' in html and 'id="report"' not in html
    error = JobError(code=JobErrorCode.ARCHITECTURE_MISMATCH, message="missing <fc3.bias>")
    api.store.create(make_record(NOW, job_id="f1", status=JobStatus.FAILED, error=error))
    failed = api.client.get("/jobs/f1").text
    assert "architecture_mismatch" in failed and "missing &lt;fc3.bias&gt;" in failed
    missing = api.client.get("/jobs/nope")
    assert missing.status_code == 404 and "no job" in missing.text
    assert missing.headers["content-type"].startswith("text/html")


def test_report_html_is_self_contained_and_errors_are_problems(api: Api) -> None:
    finished_job(api, "ok1")
    store_report(api, "ok1", full_report())
    response = api.client.get("/v1/jobs/ok1/report.html")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-disposition"] == 'inline; filename="ok1-report.html"'
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert "<script" not in response.text and not re.search(r'(src|href)="', response.text)
    assert_problem(api.client.get("/v1/jobs/nope/report.html"), 404, "not_found")
    api.store.create(make_record(NOW, job_id="r1", status=JobStatus.RUNNING))
    assert_problem(api.client.get("/v1/jobs/r1/report.html"), 409, "job_not_finished")
    api.store.create(make_record(NOW, job_id="c1", status=JobStatus.CANCELLED))
    assert_problem(api.client.get("/v1/jobs/c1/report.html"), 409, "no_model")
    api.store.update("ok1", files_expired_at=NOW)
    assert_problem(api.client.get("/v1/jobs/ok1/report.html"), 410, "gone")
    doc = api.client.get("/openapi.json").json()
    assert "text/html" in doc["paths"]["/v1/jobs/{job_id}/report.html"]["get"]["responses"][
        "200"]["content"]


def test_the_form_submits_a_job_once_per_form(api: Api, model_files: ModelFiles) -> None:
    page = api.client.get("/").text
    [action] = re.findall(r'<form class="submit" method="post" action="([^"]+)"', page)
    assert '<script src="/static/web/submit.js" defer></script>' in page
    [spec_text] = re.findall(r'<textarea[^>]*>([^<]*)</textarea>', page)
    assert 'name="model" type="file"' in page and json.loads(unescape(spec_text)) == REFERENCE

    def send() -> str:
        with model_files.state_dict.open("rb") as f:
            response = api.client.post(action, files={"model": ("sd.pt", f)},
                                       data={"spec": json.dumps(REFERENCE)},
                                       follow_redirects=False)
        assert response.status_code == 303, response.text
        location: str = response.headers["location"]
        return location

    location = send()
    job_id = location.removeprefix("/jobs/")
    assert api.store.get(job_id) is not None and api.queued_job_ids() == [job_id]
    assert send() == location  # the same form sent again: the same job
    assert api.queued_job_ids() == [job_id]


def test_form_errors_show_in_the_page(api: Api, model_files: ModelFiles) -> None:
    bad = {**REFERENCE, "pruning": {"amount": 1.5}}
    with model_files.state_dict.open("rb") as f:
        response = api.client.post("/jobs?key=k1", files={"model": ("sd.pt", f)},
                                   data={"spec": json.dumps(bad)})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")
    error = response.text.split('id="submit-error"', 1)[1].split("</div>", 1)[0]
    assert "validation_error" in error and "spec.pruning.amount" in error
    assert api.queued_job_ids() == []


def test_docs_load_their_assets_from_the_app(api: Api) -> None:
    html = api.client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/static/swagger-ui/") for a in assets), assets
    assert "http" not in html.lower().replace("http-equiv", "")
    for asset in assets:
        assert api.client.get(asset).status_code == 200, asset
    assert "validatorUrl" in html  # no badge that calls validator.swagger.io
    assert api.client.get("/redoc").status_code == 404  # ReDoc would load from a CDN
    js = api.client.get("/static/web/job.js")
    assert js.status_code == 200 and "EventSource" in js.text


def test_job_page_of_a_failed_target_draws_its_frontier(api: Api) -> None:
    error = JobError(code=JobErrorCode.TARGET_UNREACHABLE, message="no candidate meets ...")
    api.store.create(make_record(NOW, job_id="t1", status=JobStatus.FAILED, error=error))
    assert 'id="target"' not in api.client.get("/jobs/t1").text  # no report left: none shown
    store_report(api, "t1", target_report())
    html = api.client.get("/jobs/t1").text
    assert "target_unreachable" in html and 'id="target"' in html
    assert 'href="/v1/jobs/t1/report.html"' in html and 'href="/v1/jobs/t1/model"' not in html
