"""The janitor against a real redis-server and a real SQLite store: dead runs and jobs the
broker lost are re-enqueued exactly when they should be, retention expires files, and the
worker heartbeat is written with its TTL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from api_tests.core.factories import make_record
from core.jobs.record import JobRecord, JobStatus
from core.queue import BROKER_MARKER_KEY, celery_config, enqueue_job, heartbeat_key
from core.settings import Settings
from core.storage.protocols import REPORT, UPLOAD
from stack import processes as P
from worker.janitor import Janitor


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with P.running_redis(tmp_path_factory.mktemp("janitor-redis")) as proc:
        yield proc.meta["url"]


@pytest.fixture
def janitor(tmp_path: Path, redis_url: str) -> Janitor:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    settings = Settings(data_dir=tmp_path, redis_url=redis_url, janitor_interval_s=1,
                        retention_s=3600, worker_heartbeat_ttl_s=7)
    return Janitor(settings, Celery("test", config_source=celery_config(settings)), "w1@test")


def add_job(janitor: Janitor, status: JobStatus, age_s: float = 60, **fields: Any) -> JobRecord:
    record = make_record(datetime.now(UTC) - timedelta(seconds=age_s), status=status, **fields)
    janitor.store.create(record)
    return record


def queue_ids(janitor: Janitor) -> list[str]:
    """Job ids of the messages waiting in the queue, one entry per message."""
    raw = janitor.redis.lrange(janitor.settings.queue_name, 0, -1)
    ids = []
    for message in raw:
        ids += [r.id for r in janitor.store.unfinished() if r.id.encode() in message]
    return ids


def test_running_job_with_an_expired_lease_is_requeued(janitor: Janitor) -> None:
    janitor.redis.set(BROKER_MARKER_KEY, "x")
    now = datetime.now(UTC)
    dead = add_job(janitor, JobStatus.RUNNING, attempts=1, worker="w0",
                   lease_expires_at=now - timedelta(seconds=1))
    alive = add_job(janitor, JobStatus.RUNNING, attempts=1, worker="w2",
                    lease_expires_at=now + timedelta(seconds=30))
    assert janitor.reconcile() == [dead.id]
    back = janitor.store.get(dead.id)
    assert back is not None and back.status is JobStatus.QUEUED
    assert back.attempts == 1 and back.worker is None  # the next claim counts the attempt
    assert janitor.store.get(alive.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert queue_ids(janitor) == [dead.id]
    assert janitor.reconcile() == []  # now in the broker: not enqueued twice


def test_queued_jobs_the_broker_lost_are_requeued_once(janitor: Janitor) -> None:
    janitor.redis.set(BROKER_MARKER_KEY, "x")
    held = add_job(janitor, JobStatus.QUEUED)
    enqueue_job(janitor.app, janitor.settings, held.id)
    lost = add_job(janitor, JobStatus.QUEUED)
    young = add_job(janitor, JobStatus.QUEUED, age_s=0)  # its message may be on its way
    add_job(janitor, JobStatus.SUCCEEDED)
    assert janitor.reconcile() == [lost.id]
    assert sorted(queue_ids(janitor)) == sorted([held.id, lost.id])
    assert young.id not in queue_ids(janitor)


def test_messages_delivered_but_unacknowledged_count_as_held(janitor: Janitor) -> None:
    janitor.redis.set(BROKER_MARKER_KEY, "x")
    job = add_job(janitor, JobStatus.QUEUED)
    enqueue_job(janitor.app, janitor.settings, job.id)
    message = janitor.redis.rpop(janitor.settings.queue_name)  # a worker took it...
    assert message is not None
    janitor.redis.hset("unacked", "tag", message)  # ...and has not acknowledged it
    assert janitor.reconcile() == []


def test_a_redis_that_lost_everything_gets_every_queued_job_back(janitor: Janitor) -> None:
    jobs = [add_job(janitor, JobStatus.QUEUED) for _ in range(3)]
    for job in jobs:
        enqueue_job(janitor.app, janitor.settings, job.id)
    janitor.redis.flushall()  # the marker went with the queue
    assert sorted(janitor.reconcile()) == sorted(j.id for j in jobs)
    assert sorted(queue_ids(janitor)) == sorted(j.id for j in jobs)
    assert janitor.redis.exists(BROKER_MARKER_KEY)


def test_retention_expires_files_and_keeps_records(janitor: Janitor) -> None:
    long_ago = datetime.now(UTC) - timedelta(seconds=3601)
    old = add_job(janitor, JobStatus.SUCCEEDED, finished_at=long_ago)
    recent = add_job(janitor, JobStatus.FAILED, finished_at=datetime.now(UTC))
    running = add_job(janitor, JobStatus.RUNNING, lease_expires_at=datetime.now(UTC)
                      + timedelta(seconds=60))
    for job in (old, recent, running):
        for name in (UPLOAD, REPORT):
            with janitor.blobs.writer(job.id, name) as f:
                f.write(b"x")
    assert janitor.sweep() == [old.id]
    expired = janitor.store.get(old.id)
    assert expired is not None and expired.files_expired_at is not None
    assert not janitor.blobs.exists(old.id, UPLOAD) and not janitor.blobs.exists(old.id, REPORT)
    for job in (recent, running):
        assert janitor.blobs.exists(job.id, UPLOAD) and janitor.blobs.exists(job.id, REPORT)
    assert janitor.sweep() == []  # once


def test_heartbeat_key_has_the_ttl(janitor: Janitor) -> None:
    janitor.run_once()
    key = heartbeat_key("w1@test")
    assert janitor.redis.exists(key)
    assert 0 < janitor.redis.ttl(key) <= 7


def test_retention_deletes_the_objects_on_s3_and_postgres(
    tmp_path: Path, redis_url: str, postgres_server: Any, s3_server: Any
) -> None:
    """Several hosts: retention expires the record in PostgreSQL and deletes the job's
    objects in S3, not just a local copy."""
    from core.storage.backends import open_blob_store, open_job_store

    settings = Settings.of(data_dir=tmp_path, redis_url=redis_url, retention_s=3600,
                           database_url=postgres_server.url(), auth_pepper="test-pepper",
                           **s3_server.settings())
    store, blobs = open_job_store(settings), open_blob_store(settings)
    janitor = Janitor(settings, Celery("test", config_source=celery_config(settings)),
                      "w1@test", store=store, blobs=blobs)
    old = add_job(janitor, JobStatus.SUCCEEDED,
                  finished_at=datetime.now(UTC) - timedelta(seconds=3601))
    recent = add_job(janitor, JobStatus.SUCCEEDED, finished_at=datetime.now(UTC))
    for job in (old, recent):
        for name in (UPLOAD, REPORT):
            with blobs.writer(job.id, name) as f:
                f.write(b"x")
    assert janitor.sweep() == [old.id]
    fresh = open_blob_store(settings)  # another host: no local cache to fool the check
    assert not fresh.exists(old.id, UPLOAD) and not fresh.exists(old.id, REPORT)
    assert fresh.exists(recent.id, UPLOAD) and fresh.exists(recent.id, REPORT)
    expired = open_job_store(settings).get(old.id)
    assert expired is not None and expired.files_expired_at is not None
    store.close()


# --- local copies ------------------------------------------------------------------------------


def scratch_copy(janitor: Janitor, job_id: str, age_s: float = 60) -> Path:
    """``scratch/<id>/out/model.pt`` as a killed job process leaves it, ``age_s`` old."""
    folder = janitor.settings.data_dir / "scratch" / job_id
    (folder / "out").mkdir(parents=True)
    (folder / "out" / "model.pt").write_bytes(b"weights")
    then = time.time() - age_s
    for path in (folder / "out" / "model.pt", folder / "out", folder):
        os.utime(path, (then, then))
    return folder


def test_local_copies_of_jobs_not_running_here_are_removed(janitor: Janitor) -> None:
    now = datetime.now(UTC)
    lease = {"attempts": 1, "lease_expires_at": now + timedelta(seconds=30)}
    mine = add_job(janitor, JobStatus.RUNNING, worker="w1@test", **lease)
    elsewhere = add_job(janitor, JobStatus.RUNNING, worker="w9@other-host", **lease)
    requeued = add_job(janitor, JobStatus.QUEUED)
    finished = add_job(janitor, JobStatus.SUCCEEDED, finished_at=now)
    kept = [scratch_copy(janitor, mine.id)]
    gone = [scratch_copy(janitor, r.id) for r in (elsewhere, requeued, finished)]
    gone.append(scratch_copy(janitor, "no-such-job", age_s=7200))  # past upload_max_s
    kept.append(scratch_copy(janitor, "upload-in-flight", age_s=60))  # no record yet
    fresh = add_job(janitor, JobStatus.QUEUED)
    kept.append(scratch_copy(janitor, fresh.id, age_s=0))  # read a moment early: next pass
    removed = janitor.sweep_local_copies()
    assert sorted(removed) == sorted(p.name for p in gone)
    assert [p.exists() for p in kept] == [True, True, True]
    assert [p.exists() for p in gone] == [False, False, False, False]


def test_a_sibling_worker_on_the_same_data_dir_keeps_its_running_jobs(janitor: Janitor) -> None:
    sibling = Janitor(janitor.settings, janitor.app, "w2@test", store=janitor.store,
                      blobs=janitor.blobs)
    sibling.heartbeat()  # registers w2@test in data_dir/workers
    job = add_job(janitor, JobStatus.RUNNING, worker="w2@test", attempts=1,
                  lease_expires_at=datetime.now(UTC) + timedelta(seconds=30))
    folder = scratch_copy(janitor, job.id)
    assert janitor.sweep_local_copies() == []
    assert folder.exists()


def test_the_first_pass_removes_a_killed_workers_copies_on_s3(
    tmp_path: Path, redis_url: str, postgres_server: Any, s3_server: Any
) -> None:
    """Several hosts: a worker killed mid-job left ``blob-cache/<id>/upload`` and
    ``scratch/<id>/out``; the job ran on elsewhere since. Its restart's first pass removes
    both; the bucket keeps the job's files."""
    from core.storage.backends import open_blob_store, open_job_store

    settings = Settings.of(data_dir=tmp_path, redis_url=redis_url, janitor_interval_s=1,
                           database_url=postgres_server.url(), auth_pepper="test-pepper",
                           **s3_server.settings())
    store, blobs = open_job_store(settings), open_blob_store(settings)
    janitor = Janitor(settings, Celery("test", config_source=celery_config(settings)),
                      "w1@test", store=store, blobs=blobs)
    job = add_job(janitor, JobStatus.SUCCEEDED, finished_at=datetime.now(UTC))
    with blobs.writer(job.id, UPLOAD) as f:
        f.write(b"x")
    blobs.local_path(job.id, UPLOAD)  # the worker's cached copy of the input
    scratch_copy(janitor, job.id)
    time.sleep(1.1)  # older than one janitor interval
    janitor.run_once()
    assert [p for p in tmp_path.rglob("*") if job.id in str(p)] == []
    assert open_blob_store(settings).exists(job.id, UPLOAD)
