"""Reading jobs: one, a page, report and model downloads, cancel, events."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from api_tests.core.factories import make_record
from api_tests.service.factories import MODEL_BYTES, NOW, REPORT_BODY, finished_job
from api_tests.support.api import Api, ModelFiles
from api_tests.support.problems import assert_problem
from core.jobs.error_codes import JobErrorCode
from core.jobs.record import JobError, JobStatus
from core.jobs.report import Progress
from core.storage.protocols import REPORT, model_file
from service.routes.jobs import EVENTS_POLL_S


def test_get_job_and_404(api: Api) -> None:
    progress = Progress(phase="finetuning", epoch=1, epochs=2, step=300, steps=938, loss=0.25)
    api.store.create(make_record(NOW, job_id="j1", status=JobStatus.RUNNING, attempts=1,
                                 started_at=NOW, progress=progress))
    job = api.client.get("/v1/jobs/j1").json()
    assert job["status"] == "running" and job["attempts"] == 1
    assert job["progress"] == {"phase": "finetuning", "epoch": 1, "epochs": 2, "step": 300,
                               "steps": 938, "loss": 0.25}
    assert job["links"] == {"self": "/v1/jobs/j1", "report": "/v1/jobs/j1/report",
                            "model": "/v1/jobs/j1/model", "events": "/v1/jobs/j1/events",
                            "cancel": "/v1/jobs/j1/cancel"}
    body = assert_problem(api.client.get("/v1/jobs/nope"), 404, "not_found")
    assert body["instance"] == "/v1/jobs/nope"


def test_failed_job_shows_error(api: Api) -> None:
    error = JobError(code=JobErrorCode.ARCHITECTURE_MISMATCH, message="missing key fc3.bias")
    api.store.create(make_record(NOW, job_id="f", status=JobStatus.FAILED, error=error,
                                 finished_at=NOW))
    job = api.client.get("/v1/jobs/f").json()
    assert job["error"] == {"code": "architecture_mismatch", "message": "missing key fc3.bias"}
    assert_problem(api.client.get("/v1/jobs/f/report"), 409, "no_model")
    assert_problem(api.client.get("/v1/jobs/f/model"), 409, "no_model")


def test_list_pages_newest_first_with_status_filter(api: Api) -> None:
    for i in range(7):
        status = JobStatus.SUCCEEDED if i % 2 else JobStatus.QUEUED
        api.store.create(make_record(NOW + timedelta(seconds=i), job_id=f"j{i}", status=status))
    seen, url = [], "/v1/jobs?limit=3"
    while url:
        page = api.client.get(url).json()
        seen += [j["id"] for j in page["data"]]
        url = page["links"]["next"]
    assert seen == [f"j{i}" for i in range(6, -1, -1)]
    page = api.client.get("/v1/jobs", params={"status": "succeeded", "limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ["j5", "j3"]
    rest = api.client.get(page["links"]["next"]).json()
    assert [j["id"] for j in rest["data"]] == ["j1"] and rest["next_cursor"] is None
    body = assert_problem(api.client.get("/v1/jobs", params={"cursor": "bogus"}), 422,
                          "validation_error")
    assert body["errors"][0]["loc"] == ["query", "cursor"]
    body = assert_problem(api.client.get("/v1/jobs", params={"status": "done"}), 422,
                          "validation_error")
    assert body["errors"][0]["loc"] == ["query", "status"]
    assert_problem(api.client.get("/v1/jobs", params={"limit": 0}), 422, "validation_error")


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
def test_report_and_model_409_while_unfinished(api: Api, status: JobStatus) -> None:
    api.store.create(make_record(NOW, job_id="u", status=status))
    assert_problem(api.client.get("/v1/jobs/u/report"), 409, "job_not_finished")
    assert_problem(api.client.get("/v1/jobs/u/model"), 409, "job_not_finished")


def test_report_download(api: Api) -> None:
    job_id = finished_job(api)
    response = api.client.get(f"/v1/jobs/{job_id}/report")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == REPORT_BODY


def test_model_download_headers_etag_and_304(api: Api) -> None:
    job_id = finished_job(api)
    sha = hashlib.sha256(MODEL_BYTES).hexdigest()
    response = api.client.get(f"/v1/jobs/{job_id}/model")
    assert response.status_code == 200 and response.content == MODEL_BYTES
    assert response.headers["x-content-sha256"] == sha
    assert response.headers["etag"] == f'"{sha}"'
    assert response.headers["content-disposition"] == (
        f'attachment; filename="{job_id}-pruned.pt"')
    again = api.client.get(f"/v1/jobs/{job_id}/model", headers={"If-None-Match": f'"{sha}"'})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == f'"{sha}"'
    other = api.client.get(f"/v1/jobs/{job_id}/model", headers={"If-None-Match": '"abc"'})
    assert other.status_code == 200


def test_model_other_formats(api: Api) -> None:
    job_id = finished_job(api)
    body = assert_problem(api.client.get(f"/v1/jobs/{job_id}/model?format=safetensors"), 404,
                          "not_found")
    assert body["available_formats"] == ["torchscript"]
    data = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    with api.blobs.writer(job_id, model_file("safetensors")) as f:
        f.write(data)
    response = api.client.get(f"/v1/jobs/{job_id}/model", params={"format": "safetensors"})
    assert response.status_code == 200 and response.content == data
    assert response.headers["x-content-sha256"] == hashlib.sha256(data).hexdigest()
    assert response.headers["content-disposition"].endswith(f'{job_id}-pruned.safetensors"')
    bad = assert_problem(api.client.get(f"/v1/jobs/{job_id}/model?format=pickle"), 422,
                         "validation_error")
    assert bad["errors"][0]["loc"] == ["query", "format"]


def test_expired_files_are_410_and_job_stays_listed(api: Api) -> None:
    job_id = finished_job(api, files_expired_at=NOW + timedelta(days=7))
    api.blobs.delete_job_files(job_id)
    assert_problem(api.client.get(f"/v1/jobs/{job_id}/report"), 410, "gone")
    assert_problem(api.client.get(f"/v1/jobs/{job_id}/model"), 410, "gone")
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert [j["id"] for j in api.client.get("/v1/jobs").json()["data"]] == [job_id]


def test_cancel_queued_running_finished(api: Api, model_files: ModelFiles) -> None:
    queued = api.submit(model_files.state_dict).json()["id"]
    response = api.client.post(f"/v1/jobs/{queued}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]
    assert api.store.get(queued).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert_problem(api.client.post(f"/v1/jobs/{queued}/cancel"), 409, "job_finished")
    assert_problem(api.client.get(f"/v1/jobs/{queued}/model"), 409, "no_model")

    api.store.create(make_record(NOW, job_id="r", status=JobStatus.RUNNING))
    response = api.client.post("/v1/jobs/r/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"]
    assert api.store.get("r").cancel_requested  # type: ignore[union-attr]

    assert_problem(api.client.post(f"/v1/jobs/{finished_job(api)}/cancel"), 409, "job_finished")
    assert_problem(api.client.post("/v1/jobs/nope/cancel"), 404, "not_found")


def test_events_stream_until_terminal(api: Api) -> None:
    job_id = finished_job(api)
    with api.client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [block for block in text.split("\n\n") if block]
    assert len(events) == 1 and events[0].startswith("event: job\ndata: ")
    assert json.loads(events[0].split("data: ", 1)[1])["status"] == "succeeded"
    assert_problem(api.client.get("/v1/jobs/nope/events"), 404, "not_found")


def job_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The job JSON of each server-sent event, as the stream delivers it."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


@pytest.mark.timeout(30)  # a missed change would otherwise wait for the next keep-alive forever
def test_events_follow_a_running_job(api: Api) -> None:
    """Each change is made only after the previous event arrived, so the stream must show
    every one of them, in order, whatever the machine's load."""
    api.store.create(make_record(NOW, job_id="live", status=JobStatus.RUNNING))
    with api.client.stream("GET", "/v1/jobs/live/events") as response:
        events = job_events(response)
        first = next(events)
        assert first["status"] == "running" and first["progress"] is None
        time.sleep(3 * EVENTS_POLL_S)  # polls that find no change send nothing

        api.store.update("live", progress=Progress(phase="finetuning", epoch=1, epochs=1))
        second = next(events)
        assert second["status"] == "running"
        assert second["progress"]["phase"] == "finetuning"

        api.store.transition("live", {JobStatus.RUNNING}, JobStatus.SUCCEEDED, finished_at=NOW)
        third = next(events)
        assert third["status"] == "succeeded"
        assert next(events, None) is None  # the stream ended with the terminal state


def test_a_failed_target_job_serves_its_frontier_report_and_no_model(api: Api) -> None:
    error = JobError(code=JobErrorCode.TARGET_UNREACHABLE, message="no candidate meets ...")
    api.store.create(make_record(NOW, job_id="f", status=JobStatus.FAILED, error=error,
                                 finished_at=NOW))
    assert_problem(api.client.get("/v1/jobs/f/report"), 409, "no_model")  # nothing left
    frontier = {"report_version": 1, "target": {"constraint": "flops", "bound": 1.0,
                                                "trials": [], "chosen": None}}
    with api.blobs.writer("f", REPORT) as f:
        f.write(json.dumps(frontier).encode())
    response = api.client.get("/v1/jobs/f/report")
    assert response.status_code == 200 and response.json() == frontier
    page = api.client.get("/v1/jobs/f/report.html")
    assert page.status_code == 200 and 'id="target"' in page.text
    assert_problem(api.client.get("/v1/jobs/f/model"), 409, "no_model")
