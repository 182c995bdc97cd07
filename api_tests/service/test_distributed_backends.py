"""The API on PostgreSQL + S3 (real servers: ``postgres_server``, ``s3_server``), and the API
when either is down: 503 + Retry-After, never 500, nothing recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api_tests.conftest import assert_problem
from api_tests.service.conftest import ModelFiles, make_settings, running_api
from core.digest import sha256_file
from core.jobs import JobStatus
from core.store import UPLOAD
from stack.processes import free_port


def test_submit_and_read_back_on_postgres_and_s3(
    tmp_path: Path, redis_url: str, model_files: ModelFiles, postgres_server: Any,
    s3_server: Any,
) -> None:
    settings = make_settings(tmp_path, redis_url, database_url=postgres_server.url(),
                             **s3_server.settings())
    with running_api(settings) as api:
        response = api.submit(model_files.state_dict)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        record = api.store.get(job_id)
        assert record is not None and record.status is JobStatus.QUEUED
        # The upload is an object in the bucket, byte for byte.
        bucket, prefix = settings.blob_url.removeprefix("s3://").split("/", 1)
        head = s3_server.client.head_object(Bucket=bucket, Key=f"{prefix}/{job_id}/{UPLOAD}")
        assert head["ContentLength"] == model_files.state_dict.stat().st_size
        assert record.upload_sha256 == sha256_file(model_files.state_dict)
        assert api.client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        ready = api.client.get("/readyz").json()
        assert ready["checks"]["database"] == "ok" and ready["checks"]["objects"] == "ok"
        assert api.queued_job_ids() == [job_id]


def test_database_and_object_store_down_answer_503(
    tmp_path: Path, redis_url: str, model_files: ModelFiles
) -> None:
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    settings = make_settings(tmp_path, redis_url, database_url=dead_db,
                             blob_url="s3://pruner/x",
                             s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                             s3_access_key_id="k", s3_secret_access_key="s")
    with running_api(settings) as api:
        body = assert_problem(api.client.get("/readyz"), 503, "not_ready")
        assert body["checks"]["database"].startswith("unreachable")
        assert body["checks"]["objects"].startswith("unreachable")
        response = api.client.get("/v1/jobs/abc")
        assert_problem(response, 503, "storage_unavailable")
        assert response.headers["Retry-After"] == "5"
        response = api.submit(model_files.state_dict)
        assert_problem(response, 503, "storage_unavailable")
        assert response.headers["Retry-After"] == "5"
        assert api.queued_job_ids() == []  # nothing was enqueued
