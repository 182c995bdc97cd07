"""POST /v1/jobs: accepted jobs, refused uploads and specs, idempotency, broker trouble."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from api_tests.support.api import REFERENCE, Api, ModelFiles, make_settings
from api_tests.support.api import running_api as running
from api_tests.support.problems import assert_problem
from core.jobs.record import JobStatus
from core.storage.blobs import LocalBlobStore
from core.storage.protocols import UPLOAD


def _job_dirs(api: Api) -> list[str]:
    return sorted(p.name for p in api.blobs.root.iterdir()) if api.blobs.root.exists() else []


def test_accepts_job_streams_upload_and_enqueues_id_only(api: Api, model_files: ModelFiles) -> None:
    raw = model_files.state_dict.read_bytes()
    response = api.submit(model_files.state_dict)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempts"] == 0
    assert job["spec"]["pruning"] == {**job["spec"]["pruning"], **REFERENCE["pruning"]}
    assert job["upload"] == {"format": "zip", "bytes": len(raw),
                             "sha256": hashlib.sha256(raw).hexdigest()}
    assert job["links"]["report"] == f"/v1/jobs/{job['id']}/report"
    with api.blobs.open(job["id"], UPLOAD) as f:
        assert f.read() == raw
    assert api.queued_job_ids() == [job["id"]]  # the task carries the id, never the bytes
    assert api.store.get(job["id"]).status is JobStatus.QUEUED  # type: ignore[union-attr]


def test_accepts_safetensors(api: Api, model_files: ModelFiles) -> None:
    response = api.submit(model_files.safetensors)
    assert response.status_code == 202, response.text
    assert response.json()["upload"]["format"] == "safetensors"


def test_upload_over_limit_is_413_and_leaves_nothing(
    tmp_path: Path, redis_url: str, model_files: ModelFiles
) -> None:
    size = model_files.state_dict.stat().st_size
    settings = make_settings(tmp_path, redis_url, max_upload_bytes=size - 1)
    with running(settings) as api:
        body = assert_problem(api.submit(model_files.state_dict), 413, "payload_too_large")
        assert body["limit_bytes"] == size - 1
        assert _job_dirs(api) == [] and api.store.list()[0] == []
        assert api.queued_job_ids() == []


def test_declared_length_over_limit_is_413_before_reading(api: Api) -> None:
    huge = api.settings.max_upload_bytes * 2
    response = api.client.post(
        "/v1/jobs", content=b"x" * 10,
        headers={"content-type": "multipart/form-data; boundary=abc",
                 "content-length": str(huge)},
    )
    assert_problem(response, 413, "payload_too_large")


def test_not_a_model_is_415(api: Api, model_files: ModelFiles) -> None:
    assert_problem(api.submit(model_files.not_a_model), 415, "unsupported_media_type")
    assert _job_dirs(api) == [] and api.store.list()[0] == []


def test_hostile_zip_is_422_invalid_upload(api: Api, model_files: ModelFiles) -> None:
    assert_problem(api.submit(model_files.evil_zip), 422, "invalid_upload")
    assert _job_dirs(api) == [] and api.queued_job_ids() == []


def test_spec_limits_timeout_must_be_a_positive_number_of_seconds(
    api: Api, model_files: ModelFiles
) -> None:
    bad = {**REFERENCE, "limits": {"timeout_s": 0}}
    body = assert_problem(api.submit(model_files.state_dict, bad), 422, "validation_error")
    assert [e["loc"] for e in body["errors"]] == [["body", "spec", "limits", "timeout_s"]]
    good = {**REFERENCE, "limits": {"timeout_s": 600}}
    response = api.submit(model_files.state_dict, good)
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["limits"] == {"timeout_s": 600}


def test_not_multipart_is_415(api: Api) -> None:
    response = api.client.post("/v1/jobs", json=REFERENCE)
    assert_problem(response, 415, "unsupported_media_type")


def test_spec_errors_name_the_field(api: Api, model_files: ModelFiles) -> None:
    bad = {**REFERENCE, "pruning": {"method": "l1_unstructured", "amount": 1.5}}
    body = assert_problem(api.submit(model_files.state_dict, bad), 422, "validation_error")
    assert [e["loc"] for e in body["errors"]] == [["body", "spec", "pruning", "amount"]]
    assert "spec.pruning.amount" in body["detail"]

    body = assert_problem(api.submit(model_files.state_dict, {"pruning": {"methd": "x"}}), 422,
                          "validation_error")
    assert ["body", "spec", "pruning", "methd"] in [e["loc"] for e in body["errors"]]

    body = assert_problem(api.submit(model_files.state_dict, "{not json"), 422,
                          "validation_error")
    assert body["errors"][0]["loc"] == ["body", "spec"]
    assert body["errors"][0]["type"] == "json_invalid"
    assert _job_dirs(api) == [] and api.store.list()[0] == []


def test_missing_fields_are_named(api: Api, model_files: ModelFiles) -> None:
    response = api.client.post("/v1/jobs", data={"spec": json.dumps(REFERENCE)},
                               files={"other": ("x", b"y")})
    body = assert_problem(response, 422, "validation_error")
    assert [e["loc"] for e in body["errors"]] == [["body", "model"]]
    with model_files.state_dict.open("rb") as f:
        response = api.client.post("/v1/jobs", files={"model": ("m.pt", f)})
    body = assert_problem(response, 422, "validation_error")
    assert [e["loc"] for e in body["errors"]] == [["body", "spec"]]


def test_truncated_multipart_is_422(api: Api) -> None:
    body = b'--abc\r\nContent-Disposition: form-data; name="model"; filename="m"\r\n\r\nPK\x03\x04'
    response = api.client.post("/v1/jobs", content=body,
                               headers={"content-type": "multipart/form-data; boundary=abc"})
    assert_problem(response, 422, "validation_error")
    assert _job_dirs(api) == []


def test_idempotency_key_same_body_same_job(api: Api, model_files: ModelFiles) -> None:
    key = {"Idempotency-Key": "build-42"}
    first = api.submit(model_files.state_dict, headers=key)
    # The same spec written differently is the same request.
    second = api.submit(model_files.state_dict, json.dumps(REFERENCE, indent=4), headers=key)
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert api.queued_job_ids() == [first.json()["id"]]
    assert _job_dirs(api) == [first.json()["id"]]


def test_idempotency_key_other_body_is_422(api: Api, model_files: ModelFiles) -> None:
    key = {"Idempotency-Key": "k1"}
    assert api.submit(model_files.state_dict, headers=key).status_code == 202
    other_spec = {**REFERENCE, "finetune": {"epochs": 1}}
    assert_problem(api.submit(model_files.state_dict, other_spec, headers=key), 422,
                   "idempotency_key_reused")
    assert_problem(api.submit(model_files.safetensors, headers=key), 422,
                   "idempotency_key_reused")
    assert len(api.queued_job_ids()) == 1


def test_bad_idempotency_key_is_422(api: Api, model_files: ModelFiles) -> None:
    body = assert_problem(api.submit(model_files.state_dict, headers={"Idempotency-Key": "a b"}),
                          422, "validation_error")
    assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"]


def test_concurrent_duplicates_make_one_job(api: Api, model_files: ModelFiles) -> None:
    codes: list[int] = []
    ids: list[str] = []
    barrier = threading.Barrier(6)

    def post() -> None:
        barrier.wait()
        response = api.submit(model_files.state_dict, headers={"Idempotency-Key": "race"})
        codes.append(response.status_code)
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 5 + [202]
    assert len(set(ids)) == 1
    assert api.queued_job_ids() == ids[:1]
    assert _job_dirs(api) == ids[:1]


def test_redis_down_is_503_with_retry_after_and_no_job(
    tmp_path: Path, model_files: ModelFiles
) -> None:
    from stack.processes import free_port

    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = make_settings(tmp_path, closed)
    with running(settings) as api:
        response = api.submit(model_files.state_dict)
        assert_problem(response, 503, "broker_unavailable")
        assert response.headers["retry-after"] == "5"
        assert api.store.list()[0] == [] and _job_dirs(api) == []
        assert api.client.get("/healthz").status_code == 200  # still serving


def test_queue_too_deep_is_429(tmp_path: Path, redis_url: str, model_files: ModelFiles) -> None:
    with running(make_settings(tmp_path, redis_url, max_queue_depth=2)) as api:
        assert [api.submit(model_files.state_dict).status_code for _ in range(2)] == [202, 202]
        response = api.submit(model_files.state_dict)
        assert_problem(response, 429, "queue_full")
        assert response.headers["retry-after"] == "30"
        assert len(api.queued_job_ids()) == 2 and len(api.store.list()[0]) == 2


def test_spec_may_come_as_a_file_part(api: Api, model_files: ModelFiles) -> None:
    """curl -F model=@m.pt -F 'spec=@spec.json;type=application/json'"""
    with model_files.state_dict.open("rb") as f:
        response = api.client.post("/v1/jobs", files={
            "model": ("m.pt", f, "application/octet-stream"),
            "spec": ("spec.json", json.dumps(REFERENCE).encode(), "application/json"),
        })
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["architecture"] == "mnist_mlp"


def test_duplicate_model_part_is_422(api: Api, model_files: ModelFiles) -> None:
    raw = model_files.state_dict.read_bytes()
    response = api.client.post("/v1/jobs", data={"spec": json.dumps(REFERENCE)},
                               files=[("model", ("a.pt", raw)), ("model", ("b.pt", raw))])
    body = assert_problem(response, 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "model"]
    assert _job_dirs(api) == []


def test_full_disk_is_507_not_500(
    api: Api, model_files: ModelFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FullDisk(io.BytesIO):
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    @contextmanager
    def no_room(self: LocalBlobStore, job_id: str, name: str) -> Iterator[FullDisk]:
        yield FullDisk()

    monkeypatch.setattr(LocalBlobStore, "writer", no_room)
    response = api.submit(model_files.state_dict)
    assert_problem(response, 507, "insufficient_storage")
    assert response.headers["retry-after"] == "60"
    assert api.store.list()[0] == [] and api.queued_job_ids() == []
