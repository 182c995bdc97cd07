"""The job lifecycle (core/jobs/lifecycle.py) on a real SQLite store, no broker: duplicate
deliveries are no-ops, attempts are counted and capped, cancels win over queued, a lost claim
writes nothing, and how a job process ended decides between re-queue and failure."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api_tests.core.factories import make_record
from core.jobs.error_codes import JobErrorCode
from core.jobs.lifecycle import (
    CancelResult,
    Claim,
    Outcome,
    ProcessEnd,
    Stop,
    cancel,
    claim,
    lease_expired,
    requeue,
    settle,
)
from core.jobs.record import JobError, JobRecord, JobStatus
from core.settings import Settings
from core.storage.sqlite import SqliteJobStore


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, max_attempts=3, job_lease_s=30)


@pytest.fixture
def store(settings: Settings) -> Iterator[SqliteJobStore]:
    store = SqliteJobStore.from_settings(settings)
    yield store
    store.close()


@pytest.fixture
def sent() -> list[str]:
    """Job ids re-enqueued through ``sent.append`` (the broker is not what these test)."""
    return []


def queued(store: SqliteJobStore, **fields: Any) -> JobRecord:
    record = make_record(created_at=datetime.now(UTC), **fields)
    store.create(record)
    return record


def test_claim_moves_queued_to_running_with_a_lease(store: SqliteJobStore,
                                                     settings: Settings) -> None:
    job = queued(store)
    held = claim(store, job.id, settings, "w1@host")
    assert held is not None and (held.job_id, held.attempt) == (job.id, 1)
    claimed = store.get(job.id)
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


def _running(store: SqliteJobStore, settings: Settings, attempts: int = 0) -> Claim:
    held = claim(store, queued(store, attempts=attempts).id, settings, "w1")
    assert held is not None
    return held


def _settle(held: Claim, end: ProcessEnd, settings: Settings, sent: list[str],
            code: JobErrorCode = JobErrorCode.CRASHED) -> Outcome:
    """``settle`` given ``code``, the sandbox's reading of the exit (worker/sandbox.py)."""
    return settle(held, end, code, settings, sent.append)


def test_killed_job_process_is_requeued_until_attempts_are_spent(
    store: SqliteJobStore, settings: Settings, sent: list[str]
) -> None:
    held = _running(store, settings)
    assert _settle(held, ProcessEnd(-signal.SIGKILL), settings, sent) is Outcome.REQUEUED
    after = store.get(held.job_id)
    assert after is not None and after.status is JobStatus.QUEUED and after.attempts == 1
    assert after.worker is None and after.lease_expires_at is None
    assert sent == [held.job_id]

    last = _running(store, settings, attempts=2)  # the third attempt
    assert _settle(last, ProcessEnd(-signal.SIGSEGV), settings, sent) is Outcome.CRASHED
    after = store.get(last.job_id)
    assert after is not None and after.status is JobStatus.FAILED
    assert after.error is not None and after.error.code == "crashed"
    assert "SIGSEGV" in after.error.message and "3 attempts" in after.error.message
    assert sent == [held.job_id]


@pytest.mark.parametrize(("end", "code", "outcome"), [
    (ProcessEnd(-signal.SIGKILL, Stop.TIMED_OUT), JobErrorCode.TIMEOUT, Outcome.TIMEOUT),
    (ProcessEnd(-signal.SIGXCPU), JobErrorCode.RESOURCE_LIMIT, Outcome.RESOURCE_LIMIT),
])
def test_timeouts_and_limits_fail_at_once(store: SqliteJobStore, settings: Settings,
                                          sent: list[str], end: ProcessEnd, code: JobErrorCode,
                                          outcome: Outcome) -> None:
    held = _running(store, settings)
    assert _settle(held, end, settings, sent, code) is outcome
    after = store.get(held.job_id)
    assert after is not None and after.status is JobStatus.FAILED and after.attempts == 1
    assert after.error is not None and after.error.code == outcome.value
    assert after.finished_at is not None and after.lease_expires_at is None
    assert sent == []


def test_an_unanswered_cancel_ends_cancelled(store: SqliteJobStore, settings: Settings,
                                             sent: list[str]) -> None:
    held = _running(store, settings)
    end = ProcessEnd(-signal.SIGKILL, Stop.CANCELLED)
    assert _settle(held, end, settings, sent) is Outcome.CANCELLED
    after = store.get(held.job_id)
    assert after is not None and after.status is JobStatus.CANCELLED and sent == []


def test_outcome_written_by_the_job_process_is_kept(store: SqliteJobStore,
                                                    settings: Settings, sent: list[str]) -> None:
    held = _running(store, settings)
    assert held.finish(JobStatus.SUCCEEDED, model_format="torchscript")
    assert _settle(held, ProcessEnd(0), settings, sent) is Outcome.SUCCEEDED
    after = store.get(held.job_id)
    assert after is not None and after.status is JobStatus.SUCCEEDED
    assert after.finished_at is not None and after.lease_expires_at is None


def test_a_lost_claim_writes_nothing(store: SqliteJobStore, settings: Settings,
                                     sent: list[str]) -> None:
    held = _running(store, settings)
    # The janitor re-queued it and another worker claimed it (attempt 2).
    store.transition(held.job_id, {JobStatus.RUNNING}, JobStatus.QUEUED)
    again = claim(store, held.job_id, settings, "w2")
    assert again is not None and again.attempt == 2
    assert _settle(held, ProcessEnd(-signal.SIGKILL), settings, sent) is Outcome.LOST
    assert held.renew(settings) is None
    assert held.finish(JobStatus.FAILED) is False
    after = store.get(held.job_id)
    assert after is not None and after.status is JobStatus.RUNNING and after.worker == "w2"
    assert sent == []


def test_renew_extends_the_lease(store: SqliteJobStore, settings: Settings) -> None:
    held = _running(store, settings)
    store.update(held.job_id, lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert lease_expired(store.get(held.job_id))  # type: ignore[arg-type]
    renewed = held.renew(settings)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > datetime.now(UTC) + timedelta(seconds=25)
    assert not lease_expired(renewed)


def test_requeue_only_a_running_job_the_check_accepts(store: SqliteJobStore,
                                                      settings: Settings,
                                                      sent: list[str]) -> None:
    held = _running(store, settings)
    assert requeue(store, held.job_id, sent.append, only_if=lease_expired) is False
    assert requeue(store, held.job_id, sent.append) is True
    assert requeue(store, held.job_id, sent.append) is False  # already queued
    after = store.get(held.job_id)
    assert after is not None and after.status is JobStatus.QUEUED
    assert after.progress is not None and after.progress.phase == "queued"
    assert sent == [held.job_id]


def test_cancel_queued_running_finished_and_unknown(store: SqliteJobStore,
                                                    settings: Settings) -> None:
    waiting = queued(store)
    result, record = cancel(store, waiting.id)
    assert result is CancelResult.CANCELLED
    assert record is not None and record.status is JobStatus.CANCELLED
    assert record.finished_at is not None

    held = _running(store, settings)
    result, record = cancel(store, held.job_id)
    assert result is CancelResult.REQUESTED
    assert record is not None and record.status is JobStatus.RUNNING and record.cancel_requested

    assert cancel(store, waiting.id)[0] is CancelResult.FINISHED
    assert cancel(store, "0" * 32) == (CancelResult.NOT_FOUND, None)


def test_a_failed_record_keeps_its_code(store: SqliteJobStore, settings: Settings) -> None:
    """The job process's own failure (an EngineError) is what settle reports, unchanged."""
    held = _running(store, settings)
    error = JobError(code=JobErrorCode.INVALID_MODEL, message="bad")
    assert held.finish(JobStatus.FAILED, error=error)
    assert settle(held, ProcessEnd(2), JobErrorCode.CRASHED, settings, [].append) is Outcome.FAILED
    after = store.get(held.job_id)
    assert after is not None and after.error == error


@pytest.mark.parametrize("attempts_before", [0, 2])  # the first attempt, and the last one
def test_a_stopping_worker_hands_the_job_back_without_using_an_attempt(
    store: SqliteJobStore, settings: Settings, sent: list[str], attempts_before: int
) -> None:
    held = _running(store, settings, attempts=attempts_before)
    end = ProcessEnd(-signal.SIGKILL, Stop.SHUTDOWN)
    assert _settle(held, end, settings, sent) is Outcome.HANDED_BACK
    after = store.get(held.job_id)
    assert after is not None and after.status is JobStatus.QUEUED and after.error is None
    assert after.attempts == attempts_before and after.worker is None
    assert sent == [held.job_id]
    again = claim(store, held.job_id, settings, "w2")  # the next worker runs it
    assert again is not None and again.attempt == attempts_before + 1


def test_a_lost_claim_is_not_handed_back(store: SqliteJobStore, settings: Settings,
                                         sent: list[str]) -> None:
    held = _running(store, settings)
    store.transition(held.job_id, {JobStatus.RUNNING}, JobStatus.QUEUED)
    again = claim(store, held.job_id, settings, "w2")
    assert again is not None
    end = ProcessEnd(-signal.SIGKILL, Stop.SHUTDOWN)
    assert _settle(held, end, settings, sent) is Outcome.LOST
    after = store.get(held.job_id)
    assert after is not None and after.status is JobStatus.RUNNING and after.attempts == 2
    assert sent == []


@pytest.mark.parametrize(("timeout_s", "message"), [
    (5, "wall-clock limit of 5 s (the spec's limits.timeout_s)"),
    (10**6, "wall-clock limit of 3600 s (the server's job_soft_time_limit_s)"),  # capped
    (None, "wall-clock limit of 3600 s (the server's job_soft_time_limit_s)"),
])
def test_timeout_message_names_the_limit_that_applied(
    store: SqliteJobStore, settings: Settings, sent: list[str], timeout_s: int | None,
    message: str
) -> None:
    spec = {"architecture": "mnist_mlp", "limits": {"timeout_s": timeout_s}}
    held = claim(store, queued(store, spec=spec).id, settings, "w1")
    assert held is not None
    end = ProcessEnd(-signal.SIGKILL, Stop.TIMED_OUT)
    assert _settle(held, end, settings, sent, JobErrorCode.TIMEOUT) is Outcome.TIMEOUT
    after = store.get(held.job_id)
    assert after is not None and after.error is not None
    assert after.error.message == f"the job ran past its {message}"
