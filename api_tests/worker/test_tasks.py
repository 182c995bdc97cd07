"""The task's claim and outcome rules on a real SQLite store (no broker needed): duplicate
deliveries are no-ops, attempts are counted and capped, cancels win over queued, and how a
job process ended decides between re-queue and failure."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api_tests.core.factories import make_record
from core.jobs import JobRecord, JobStatus
from core.settings import Settings
from core.store_sqlite import SqliteJobStore
from worker import tasks
from worker.tasks import Outcome, claim, record_outcome


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, max_attempts=3, job_lease_s=30)


@pytest.fixture
def store(settings: Settings) -> Iterator[SqliteJobStore]:
    store = SqliteJobStore.from_settings(settings)
    yield store
    store.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Job ids the task re-enqueued (the broker is not what these tests are about)."""
    ids: list[str] = []
    monkeypatch.setattr(tasks, "enqueue_job", lambda app, settings, job_id: ids.append(job_id))
    return ids


def queued(store: SqliteJobStore, **fields: Any) -> JobRecord:
    record = make_record(datetime.now(UTC), **fields)
    store.create(record)
    return record


def test_claim_moves_queued_to_running_with_a_lease(store: SqliteJobStore,
                                                     settings: Settings) -> None:
    job = queued(store)
    claimed = claim(store, job.id, settings, "w1@host")
    assert claimed is not None and claimed.status is JobStatus.RUNNING
    assert claimed.attempts == 1 and claimed.worker == "w1@host"
    assert claimed.lease_expires_at is not None
    lease = (claimed.lease_expires_at - datetime.now(UTC)).total_seconds()
    assert 25 < lease <= 30


def test_duplicate_delivery_is_a_no_op(store: SqliteJobStore, settings: Settings) -> None:
    job = queued(store)
    assert claim(store, job.id, settings, "w1") is not None
    assert claim(store, job.id, settings, "w2") is None  # running under w1's lease
    assert store.get(job.id).attempts == 1  # type: ignore[union-attr]
    store.transition(job.id, {JobStatus.RUNNING}, JobStatus.SUCCEEDED)
    assert claim(store, job.id, settings, "w2") is None  # finished
    assert tasks.supervise(job.id, settings, store) == "skipped"
    assert claim(store, "0" * 32, settings, "w1") is None  # unknown job


def test_cancel_requested_before_start_never_runs(store: SqliteJobStore,
                                                   settings: Settings) -> None:
    job = queued(store, cancel_requested=True)
    assert claim(store, job.id, settings, "w1") is None
    after = store.get(job.id)
    assert after is not None and after.status is JobStatus.CANCELLED and after.attempts == 0


def test_attempts_spent_fail_crashed_without_running(store: SqliteJobStore,
                                                     settings: Settings) -> None:
    job = queued(store, attempts=3)
    assert claim(store, job.id, settings, "w1") is None
    after = store.get(job.id)
    assert after is not None and after.status is JobStatus.FAILED
    assert after.error is not None and after.error.code == "crashed"
    assert "3 attempts" in after.error.message


def _running(store: SqliteJobStore, settings: Settings, attempts: int = 0) -> JobRecord:
    record = claim(store, queued(store, attempts=attempts).id, settings, "w1")
    assert record is not None
    return record


def test_killed_job_process_is_requeued_until_attempts_are_spent(
    store: SqliteJobStore, settings: Settings, sent: list[str]
) -> None:
    record = _running(store, settings)
    assert record_outcome(store, record, Outcome(-signal.SIGKILL), settings) == "requeued"
    after = store.get(record.id)
    assert after is not None and after.status is JobStatus.QUEUED and after.attempts == 1
    assert sent == [record.id]

    last = _running(store, settings, attempts=2)  # the third attempt
    assert record_outcome(store, last, Outcome(-signal.SIGSEGV), settings) == "crashed"
    after = store.get(last.id)
    assert after is not None and after.status is JobStatus.FAILED
    assert after.error is not None and after.error.code == "crashed"
    assert "SIGSEGV" in after.error.message and "3 attempts" in after.error.message
    assert sent == [record.id]


@pytest.mark.parametrize(("outcome", "code"), [
    (Outcome(-signal.SIGKILL, timed_out=True), "timeout"),
    (Outcome(-signal.SIGXCPU), "resource_limit"),
    (Outcome(-signal.SIGKILL, oom_killed=True), "resource_limit"),
])
def test_timeouts_and_limits_fail_at_once(store: SqliteJobStore, settings: Settings,
                                          sent: list[str], outcome: Outcome, code: str) -> None:
    record = _running(store, settings)
    assert record_outcome(store, record, outcome, settings) == code
    after = store.get(record.id)
    assert after is not None and after.status is JobStatus.FAILED and after.attempts == 1
    assert after.error is not None and after.error.code == code
    assert sent == []


def test_outcome_written_by_the_job_process_is_kept(store: SqliteJobStore,
                                                    settings: Settings) -> None:
    record = _running(store, settings)
    store.transition(record.id, {JobStatus.RUNNING}, JobStatus.SUCCEEDED)
    assert record_outcome(store, record, Outcome(0), settings) == "succeeded"


def test_a_lost_claim_writes_nothing(store: SqliteJobStore, settings: Settings,
                                     sent: list[str]) -> None:
    record = _running(store, settings)
    # The janitor re-queued it and another worker claimed it (attempt 2).
    store.transition(record.id, {JobStatus.RUNNING}, JobStatus.QUEUED)
    again = claim(store, record.id, settings, "w2")
    assert again is not None and again.attempts == 2
    assert record_outcome(store, record, Outcome(-signal.SIGKILL), settings) == "lost"
    assert tasks.renew_lease(store, record, settings) is None
    after = store.get(record.id)
    assert after is not None and after.status is JobStatus.RUNNING and after.worker == "w2"
    assert sent == []


def test_renew_lease_extends_it(store: SqliteJobStore, settings: Settings) -> None:
    record = _running(store, settings)
    store.update(record.id, lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
    renewed = tasks.renew_lease(store, record, settings)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > datetime.now(UTC) + timedelta(seconds=25)
