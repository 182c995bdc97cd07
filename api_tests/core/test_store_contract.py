"""The ``JobStore`` contract (core/storage/protocols.py), run against every backend: round trips,
compare-and-set, idempotency races (threads and processes), the queue limit, pagination,
the reconciler's and the metrics' queries.

Every test runs once per backend of api_tests/core/store_backends.py (the ``backend`` and
``store`` fixtures of api_tests/core/conftest.py); a backend joins there."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime, timedelta

import pytest

from api_tests.core.factories import T0, make_record
from api_tests.core.store_backends import Backend
from core.jobs.error_codes import JobErrorCode
from core.jobs.record import JobError, JobRecord, JobStatus
from core.jobs.report import Progress
from core.storage.protocols import IdempotencyConflict, JobStore, QueueLimitReached


def test_create_get_round_trip_and_reopen(backend: Backend, store: JobStore) -> None:
    record = make_record()
    created, is_new = store.create(record)
    assert is_new and created == record
    assert store.get(record.id) == record
    assert store.get("nope") is None
    assert backend.open().get(record.id) == record  # survives a new process/open


def test_update_sets_fields_and_validates(store: JobStore) -> None:
    record, _ = store.create(make_record())
    updated = store.update(record.id, progress=Progress(phase="finetuning", epoch=1, epochs=2),
                           attempts=2)
    assert updated.progress is not None and updated.progress.epoch == 1
    assert updated.attempts == 2
    assert store.get(record.id) == updated
    with pytest.raises(ValueError):
        store.update(record.id, no_such_field=1)
    with pytest.raises(ValueError):
        store.update(record.id, attempts="many")
    with pytest.raises(KeyError):
        store.update("missing", attempts=1)


def test_transition_is_compare_and_set(store: JobStore) -> None:
    record, _ = store.create(make_record())
    now = datetime.now(UTC)
    running = store.transition(record.id, {JobStatus.QUEUED}, JobStatus.RUNNING, started_at=now)
    assert running is not None and running.status is JobStatus.RUNNING
    assert running.started_at == now
    assert store.transition(record.id, {JobStatus.QUEUED}, JobStatus.CANCELLED) is None
    assert store.get(record.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert store.transition("missing", {JobStatus.QUEUED}, JobStatus.RUNNING) is None


def test_concurrent_transitions_have_one_winner(store: JobStore) -> None:
    record, _ = store.create(make_record())
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        wins.append(store.transition(record.id, {JobStatus.QUEUED}, JobStatus.RUNNING) is not None)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_idempotency_same_key_same_hash_returns_existing(store: JobStore) -> None:
    first, new1 = store.create(make_record(), idempotency_key="k", request_hash="h")
    second, new2 = store.create(make_record(), idempotency_key="k", request_hash="h")
    assert (new1, new2) == (True, False)
    assert second.id == first.id
    with pytest.raises(IdempotencyConflict):
        store.create(make_record(), idempotency_key="k", request_hash="other")
    assert len(store.list(limit=100)[0]) == 1


def _create_in_process(backend: Backend, job_id: str, out: multiprocessing.Queue[str]) -> None:
    store = backend.open()
    record, _ = store.create(make_record(job_id=job_id), idempotency_key="race", request_hash="h")
    out.put(record.id)


def test_idempotency_race_across_processes_creates_one_job(backend: Backend,
                                                           store: JobStore) -> None:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_create_in_process, args=(backend, f"job{i}", out))
             for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    ids = {out.get(timeout=5) for _ in procs}
    assert len(ids) == 1
    page, _ = store.list(limit=100)
    assert [r.id for r in page] == list(ids)


def test_pagination_newest_first_with_ties(store: JobStore) -> None:
    # 25 jobs, three per timestamp, so the id tie-break is exercised across page edges.
    records = [make_record(T0 + timedelta(seconds=i // 3), job_id=f"{i:02d}") for i in range(25)]
    for r in records:
        store.create(r)
    expected = sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)
    seen: list[JobRecord] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = store.list(limit=10, cursor=cursor)
        seen.extend(page)
        pages += 1
        if cursor is None:
            break
    assert pages == 3
    assert [r.id for r in seen] == [r.id for r in expected]


def test_list_filters_by_status_and_rejects_bad_cursor(store: JobStore) -> None:
    for i in range(5):
        store.create(make_record(T0 + timedelta(seconds=i), job_id=f"q{i}"))
    store.create(make_record(job_id="done", status=JobStatus.SUCCEEDED, finished_at=T0))
    page, cursor = store.list(status=JobStatus.SUCCEEDED)
    assert [r.id for r in page] == ["done"] and cursor is None
    page, cursor = store.list(status=JobStatus.QUEUED, limit=4)
    assert [r.id for r in page] == ["q4", "q3", "q2", "q1"] and cursor is not None
    page, cursor = store.list(status=JobStatus.QUEUED, limit=4, cursor=cursor)
    assert [r.id for r in page] == ["q0"] and cursor is None
    with pytest.raises(ValueError):
        store.list(cursor="not-a-cursor")
    with pytest.raises(ValueError):
        store.list(cursor="WzEsMl0")  # [1,2]: a JSON list, but not ours


def test_counts_unfinished_and_finished_before(store: JobStore) -> None:
    store.create(make_record(job_id="q"))
    store.create(make_record(job_id="r", status=JobStatus.RUNNING))
    store.create(make_record(job_id="old", status=JobStatus.SUCCEEDED, finished_at=T0))
    error = JobError(code=JobErrorCode.TIMEOUT, message="too slow")
    store.create(make_record(job_id="new", status=JobStatus.FAILED,
                             finished_at=T0 + timedelta(days=2), error=error))
    store.create(make_record(job_id="gone", status=JobStatus.CANCELLED, finished_at=T0,
                             files_expired_at=T0))
    counts = store.counts_by_status()
    assert counts == {JobStatus.QUEUED: 1, JobStatus.RUNNING: 1, JobStatus.SUCCEEDED: 1,
                      JobStatus.FAILED: 1, JobStatus.CANCELLED: 1}
    assert sorted(r.id for r in store.unfinished()) == ["q", "r"]
    assert [r.id for r in store.finished_before(T0 + timedelta(days=1))] == ["old"]
    store.update("old", files_expired_at=T0 + timedelta(days=1))
    assert list(store.finished_before(T0 + timedelta(days=1))) == []
    assert [r.id for r in store.finished_before(T0 + timedelta(days=3))] == ["new"]


def test_delete(store: JobStore) -> None:
    record, _ = store.create(make_record(), idempotency_key="k", request_hash="h")
    assert store.delete(record.id) is True
    assert store.get(record.id) is None
    assert store.delete(record.id) is False
    again, is_new = store.create(make_record(), idempotency_key="k", request_hash="other")
    assert is_new  # the key is free again once its job is gone


def test_duration_histogram(store: JobStore) -> None:
    for i, seconds in enumerate([0.5, 2.0, 2.0, 30.0]):
        store.create(make_record(job_id=f"s{i}", status=JobStatus.SUCCEEDED, started_at=T0,
                                 finished_at=T0 + timedelta(seconds=seconds)))
    store.create(make_record(job_id="f", status=JobStatus.FAILED, started_at=T0,
                             finished_at=T0 + timedelta(seconds=5)))
    store.create(make_record(job_id="c", status=JobStatus.CANCELLED, finished_at=T0))  # never ran
    store.create(make_record(job_id="q"))
    hist = store.duration_histogram((1.0, 10.0))
    assert hist == {
        JobStatus.SUCCEEDED: ([1, 3], 4, 34.5),
        JobStatus.FAILED: ([0, 1], 1, 5.0),
    }


def test_max_queued_is_never_overshot_by_concurrent_creates(store: JobStore) -> None:
    created: list[str] = []
    refused: list[int] = []

    def create() -> None:
        try:
            record, _ = store.create(make_record(), max_queued=5)
            created.append(record.id)
        except QueueLimitReached as exc:
            refused.append(exc.queued)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(created), refused) == (5, [5] * 15)
    assert store.counts_by_status()[JobStatus.QUEUED] == 5
    # A job leaving the queue frees a place.
    store.transition(created[0], {JobStatus.QUEUED}, JobStatus.RUNNING)
    store.create(make_record(), max_queued=5)
    with pytest.raises(QueueLimitReached):
        store.create(make_record(), max_queued=5)


def test_idempotent_replay_is_answered_even_when_the_queue_is_full(store: JobStore) -> None:
    first, _ = store.create(make_record(), idempotency_key="k", request_hash="h", max_queued=1)
    again, is_new = store.create(make_record(), idempotency_key="k", request_hash="h", max_queued=1)
    assert (again.id, is_new) == (first.id, False)
