"""The API on PostgreSQL + S3 (real servers: ``postgres_server``, ``s3_server``), and the API
when either is down: 503 + Retry-After, never 500, nothing recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx

from api_tests.core.datasets.files import arrays, write_safetensors
from api_tests.core.factories import T0, make_record
from api_tests.support.api import ModelFiles, make_settings, running_api
from api_tests.support.problems import assert_problem
from core.datasets.record import DATASET_FILE
from core.jobs.formats import ModelFormat
from core.jobs.record import JobStatus
from core.storage.digest import sha256_file
from core.storage.protocols import UPLOAD, model_file
from stack.processes import free_port

PEPPER = "test-pepper"  # several hosts share a database: each needs the same pepper


def test_submit_and_read_back_on_postgres_and_s3(
    tmp_path: Path, redis_url: str, model_files: ModelFiles, postgres_server: Any,
    s3_server: Any,
) -> None:
    settings = make_settings(tmp_path, redis_url, database_url=postgres_server.url(),
                             auth_pepper=PEPPER,
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
        # The upload was checked from a scratch copy, which is gone once the job is accepted.
        assert not (settings.data_dir / "blob-cache" / job_id).exists()


def test_database_and_object_store_down_answer_503(
    tmp_path: Path, redis_url: str, model_files: ModelFiles
) -> None:
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    settings = make_settings(tmp_path, redis_url, database_url=dead_db, auth_pepper=PEPPER,
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


def test_model_download_from_s3_streams_or_redirects_to_a_presigned_url(
    tmp_path: Path, redis_url: str, postgres_server: Any, s3_server: Any
) -> None:
    payload = b"pruned model bytes " * 1000
    sha = hashlib.sha256(payload).hexdigest()
    backends = {"database_url": postgres_server.url(), "auth_pepper": PEPPER,
                **s3_server.settings()}
    for presign_s in (0, 60):
        settings = make_settings(tmp_path / str(presign_s), redis_url, s3_presign_s=presign_s,
                                 **backends)
        with running_api(settings) as api:
            if presign_s == 0:  # the first round stores the job both rounds read
                record = make_record(status=JobStatus.SUCCEEDED, started_at=T0, finished_at=T0,
                                     model_format=ModelFormat.TORCHSCRIPT, model_sha256=sha)
                api.store.create(record)
                with api.blobs.writer(record.id, model_file(ModelFormat.TORCHSCRIPT)) as f:
                    f.write(payload)
            response = api.client.get(f"/v1/jobs/{record.id}/model", follow_redirects=False)
            assert response.headers["etag"] == f'"{sha}"'
            if presign_s == 0:
                assert response.status_code == 200 and response.content == payload
                ranged = api.client.get(f"/v1/jobs/{record.id}/model",
                                        headers={"Range": "bytes=0-4"})
                assert ranged.status_code == 206 and ranged.content == payload[:5]
                assert ranged.headers["content-range"] == f"bytes 0-4/{len(payload)}"
                tail = api.client.get(f"/v1/jobs/{record.id}/model",
                                      headers={"Range": "bytes=-7"})
                assert tail.status_code == 206 and tail.content == payload[-7:]
                past = api.client.get(f"/v1/jobs/{record.id}/model",
                                      headers={"Range": f"bytes={len(payload)}-"})
                assert past.status_code == 416
                assert past.headers["content-range"] == f"bytes */{len(payload)}"
                assert response.headers["content-length"] == str(len(payload))
                assert response.headers["accept-ranges"] == "bytes"
                assert f"{record.id}-pruned.pt" in response.headers["content-disposition"]
                # Streamed from the object store: the API host kept no copy of the model.
                assert not (settings.data_dir / "blob-cache" / record.id).exists()
            else:
                assert response.status_code == 307
                location = response.headers["location"]
                assert location.startswith(s3_server.endpoint) and "Expires=" in location
                direct = httpx.get(location)
                assert direct.status_code == 200 and direct.content == payload
                assert f"{record.id}-pruned.pt" in direct.headers["content-disposition"]
            unchanged = api.client.get(f"/v1/jobs/{record.id}/model",
                                       headers={"If-None-Match": f'"{sha}"'})
            assert unchanged.status_code == 304


def test_object_store_down_alone_answers_503_and_records_nothing(
    tmp_path: Path, redis_url: str, model_files: ModelFiles, postgres_server: Any
) -> None:
    """PostgreSQL up, S3 down: the upload cannot be stored, so no job exists afterwards (not a
    record pointing at a missing object); reading a finished job's model is a 503 too."""
    settings = make_settings(tmp_path, redis_url, database_url=postgres_server.url(),
                             auth_pepper=PEPPER,
                             blob_url="s3://pruner/x",
                             s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                             s3_access_key_id="k", s3_secret_access_key="s")
    with running_api(settings) as api:
        before = {r.id for r in api.store.list(limit=1000)[0]}
        body = assert_problem(api.client.get("/readyz"), 503, "not_ready")
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["objects"].startswith("unreachable")
        response = api.submit(model_files.state_dict)
        assert_problem(response, 503, "storage_unavailable")
        assert response.headers["Retry-After"] == "5"
        assert {r.id for r in api.store.list(limit=1000)[0]} == before  # nothing recorded
        assert api.queued_job_ids() == []
        finished = make_record(status=JobStatus.SUCCEEDED, started_at=T0, finished_at=T0,
                               model_format=ModelFormat.TORCHSCRIPT, model_sha256="0" * 64)
        api.store.create(finished)
        response = api.client.get(f"/v1/jobs/{finished.id}/model")
        assert_problem(response, 503, "storage_unavailable")
        assert response.headers["Retry-After"] == "5"


def test_a_dataset_on_postgres_and_s3_is_an_object_and_deletes(
    tmp_path: Path, redis_url: str, postgres_server: Any, s3_server: Any,
) -> None:
    settings = make_settings(tmp_path, redis_url, database_url=postgres_server.url(),
                             auth_pepper=PEPPER, **s3_server.settings())
    path = write_safetensors(tmp_path / "d.safetensors", arrays())
    bucket, prefix = settings.blob_url.removeprefix("s3://").split("/", 1)
    with running_api(settings) as api, path.open("rb") as f:
        made = api.client.post("/v1/datasets", files={"dataset": (path.name, f)})
        assert made.status_code == 201, made.text
        key = f"{prefix}/{made.json()['id']}/{DATASET_FILE}"
        head = s3_server.client.head_object(Bucket=bucket, Key=key)
        deleted = api.client.delete(f"/v1/datasets/{made.json()['id']}")
        listed = s3_server.client.list_objects_v2(Bucket=bucket, Prefix=key)
    assert (head["ContentLength"], deleted.status_code, listed["KeyCount"]) == (
        path.stat().st_size, 204, 0)
