"""What SqliteJobStore adds to the JobStore contract (test_store_contract.py): it opens a
database made by an older version and migrates it."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta
from pathlib import Path
from typing import Any

from api_tests.core.factories import T0, make_record
from core.jobs.record import JobStatus
from core.storage.sqlite import SqliteJobStore


def test_opens_a_database_without_started_us(tmp_path: Path) -> None:
    """A jobs.sqlite3 made before the started_us column existed gets it, backfilled."""
    import sqlite3

    record = make_record(job_id="old", status=JobStatus.SUCCEEDED, started_at=T0,
                         finished_at=T0 + timedelta(seconds=12.5))
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created_us"
                 " INTEGER NOT NULL, finished_us INTEGER, files_expired INTEGER NOT NULL"
                 " DEFAULT 0, idempotency_key TEXT UNIQUE, request_hash TEXT, record TEXT"
                 " NOT NULL)")
    conn.execute("INSERT INTO jobs VALUES ('old', 'succeeded', 0, ?, 0, NULL, NULL, ?)",
                 (int((T0.timestamp() + 12.5) * 1e6), record.model_dump_json()))
    conn.commit()
    conn.close()
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    assert store.get("old") == record
    assert store.duration_histogram((10.0, 20.0)) == {JobStatus.SUCCEEDED: ([0, 1], 1, 12.5)}


def _open_at_once(path: str, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        SqliteJobStore(Path(path)).close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        errors.put(repr(exc))


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    """``python -m stack`` starts the API and the worker on a fresh data dir together.

    Switching a new database to WAL answers SQLITE_BUSY without the busy handler while
    another process holds the lock; without a retry about one round in six failed here
    with "database is locked" (the API then exited at start).
    """
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    for round_ in range(20):
        path = str(tmp_path / f"{round_}" / "jobs.sqlite3")
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_open_at_once, args=(path, barrier, errors))
                 for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * 6
        assert errors.empty(), errors.get()
        assert SqliteJobStore(Path(path)).sql() is not None
