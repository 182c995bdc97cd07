"""The job store, written once over ``core/storage/sql.py``: the ``JobStore`` of
``core/storage/protocols.py`` for both SQL backends.

Every statement here uses ``?`` placeholders and SQL that SQLite and PostgreSQL both accept;
a backend (``core/storage/sqlite.py``, ``core/storage/postgres.py``) supplies only what
differs between them:

- ``_write()``: one short transaction (SQLite ``BEGIN IMMEDIATE``, which serialises every
  writer; PostgreSQL a transaction on a pooled connection) and ``_read()``: a connection;
- ``_lock_creates(conn)``: what serialises creates, so the queue-depth count, the quota
  counts and the idempotency-key lookup cannot interleave (nothing more in SQLite, where
  ``BEGIN IMMEDIATE`` already does; an advisory lock in PostgreSQL);
- ``_ROW_LOCK``: the suffix that locks the row a compare-and-set reads (nothing in SQLite;
  ``FOR UPDATE`` in PostgreSQL, so two workers racing for a job serialise on the row);
- its connections, schema and migrations, and ``ping``.

The record is stored whole as JSON; the columns beside it exist only to index and filter.
"""

from __future__ import annotations

import base64
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from core.jobs.record import JobRecord, JobStatus
from core.storage.protocols import (
    DatasetMissing,
    Histogram,
    IdempotencyConflict,
    QueueLimitReached,
    merge_fields,
)
from core.storage.sql import SqlAccess, SqlConn, micros
from core.tenants import scheduling as tenancy_sql
from core.tenants.quotas import Quota, RunningLimits

MAX_PAGE = 200

_TERMINAL = tuple(s.value for s in JobStatus if s.terminal)
_UNFINISHED = tuple(s.value for s in JobStatus if not s.terminal)


def encode_cursor(created_us: int, job_id: str) -> str:
    raw = json.dumps([created_us, job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Inverse of ``encode_cursor``; ``ValueError`` for anything we did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_us, job_id = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError("invalid cursor") from exc
    if not isinstance(created_us, int) or not isinstance(job_id, str):
        raise ValueError("invalid cursor")
    return created_us, job_id


def _marks(values: tuple[str, ...]) -> str:
    return ",".join("?" * len(values))


def _record(row: Any) -> JobRecord | None:
    return None if row is None else JobRecord.model_validate_json(row[0])


class SqlJobStore(ABC):
    """``JobStore`` over one SQL connection surface; subclasses are the backends."""

    reads_are_local: bool
    _ROW_LOCK = ""

    # --- what a backend supplies --------------------------------------------------------

    @abstractmethod
    def _write(self) -> AbstractContextManager[SqlConn]:
        """One short write transaction: committed on exit, rolled back on an exception."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[SqlConn]:
        """A connection for reads outside a write transaction."""

    @abstractmethod
    def _lock_creates(self, conn: SqlConn) -> None:
        """Serialise creates inside the write transaction ``conn`` is in."""

    def sql(self) -> SqlAccess:
        return _Access(self)

    # --- JobStore -----------------------------------------------------------------------

    def create(
        self,
        record: JobRecord,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        max_queued: int | None = None,
        quota: Quota | None = None,
    ) -> tuple[JobRecord, bool]:
        key = tenancy_sql.scoped_key(record.tenant, idempotency_key)
        with self._write() as conn:
            self._lock_creates(conn)
            if key is not None:
                row = conn.execute(
                    "SELECT request_hash, record FROM jobs WHERE idempotency_key = ?", (key,),
                ).fetchone()
                if row is not None:
                    if row[0] != request_hash:
                        raise IdempotencyConflict(idempotency_key)
                    return JobRecord.model_validate_json(row[1]), False
            if max_queued is not None:
                # Counted inside the serialised create, so a burst cannot overshoot the limit.
                (queued,) = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = ?", (JobStatus.QUEUED.value,)
                ).fetchone()
                if int(queued) >= max_queued:
                    raise QueueLimitReached(int(queued))
            if quota is not None:
                tenancy_sql.check_quota(conn, record, quota, micros(record.created_at))
            if record.spec.data.uploaded and not self._hold_dataset(conn, record):
                raise DatasetMissing(record.spec.data.dataset)
            conn.execute(
                "INSERT INTO jobs (id, created_us, status, started_us, finished_us,"
                " files_expired, tenant, stored_bytes, notify_due, idempotency_key,"
                " request_hash, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, micros(record.created_at), *tenancy_sql.indexed_columns(record),
                 key, request_hash, record.model_dump_json()),
            )
        return record, True

    def _hold_dataset(self, conn: SqlConn, record: JobRecord) -> bool:
        """Whether the job's dataset is its tenant's, its row locked until the insert commits
        (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises this with a delete)."""
        row = conn.execute("SELECT 1 FROM datasets WHERE id = ? AND tenant = ?" + self._ROW_LOCK,
                           (record.spec.data.dataset, record.tenant)).fetchone()
        return row is not None

    def get(self, job_id: str, *, tenant: str | None = None) -> JobRecord | None:
        sql, params = "SELECT record FROM jobs WHERE id = ?", [job_id]
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", [job_id, tenant]
        with self._read() as conn:
            return _record(conn.execute(sql, params).fetchone())

    def next_queued(self, running_limits: RunningLimits) -> str | None:
        with self._read() as conn:
            return tenancy_sql.next_queued(conn, running_limits)

    def notify_due(self) -> list[JobRecord]:
        with self._read() as conn:
            return tenancy_sql.notify_due(conn)

    def list(
        self, *, status: JobStatus | None = None, limit: int = 20, cursor: str | None = None,
        tenant: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        limit = max(1, min(limit, MAX_PAGE))
        where: list[str] = []
        params: list[Any] = []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if status is not None:
            where.append("status = ?")
            params.append(status.value)
        if cursor is not None:
            where.append("(created_us, id) < (?, ?)")
            params.extend(decode_cursor(cursor))
        sql = "SELECT created_us, id, record FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_us DESC, id DESC LIMIT ?"
        with self._read() as conn:
            rows = conn.execute(sql, (*params, limit + 1)).fetchall()
        page = [JobRecord.model_validate_json(r[2]) for r in rows[:limit]]
        if len(rows) <= limit:
            return page, None
        return page, encode_cursor(int(rows[limit - 1][0]), str(rows[limit - 1][1]))

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        with self._write() as conn:
            current = self._get_locked(conn, job_id)
            if current is None:
                raise KeyError(job_id)
            return _save(conn, current, fields)

    def transition(
        self, job_id: str, from_statuses: set[JobStatus], to: JobStatus, **fields: Any
    ) -> JobRecord | None:
        with self._write() as conn:
            current = self._get_locked(conn, job_id)
            if current is None or current.status not in from_statuses:
                return None
            return _save(conn, current, {**fields, "status": to})

    def delete(self, job_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def duration_histogram(self, buckets: tuple[float, ...]) -> dict[JobStatus, Histogram]:
        # Bucket bounds are our own floats, written as literals (repr is valid SQL for both).
        cases = "".join(f", SUM(CASE WHEN d <= {float(b)!r} THEN 1 ELSE 0 END)"
                        for b in buckets)
        sql = (
            f"SELECT status, COUNT(*), COALESCE(SUM(d), 0){cases} FROM ("
            " SELECT status, (finished_us - started_us) / 1e6 AS d FROM jobs"
            " WHERE started_us IS NOT NULL AND finished_us IS NOT NULL) t GROUP BY status"
        )
        with self._read() as conn:
            rows = conn.execute(sql).fetchall()
        out: dict[JobStatus, Histogram] = {}
        for status, count, total, *cumulative in rows:
            out[JobStatus(status)] = ([int(c or 0) for c in cumulative], int(count), float(total))
        return out

    def counts_by_status(self) -> dict[JobStatus, int]:
        counts = dict.fromkeys(JobStatus, 0)
        with self._read() as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        for status, n in rows:
            counts[JobStatus(status)] = int(n)
        return counts

    def unfinished(self) -> Iterator[JobRecord]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT record FROM jobs WHERE status IN ({_marks(_UNFINISHED)})"
                " ORDER BY created_us", _UNFINISHED,
            ).fetchall()
        return (JobRecord.model_validate_json(r[0]) for r in rows)

    def finished_before(self, when: datetime) -> Iterator[JobRecord]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT record FROM jobs WHERE NOT files_expired AND finished_us < ?"
                f" AND status IN ({_marks(_TERMINAL)}) ORDER BY finished_us",
                (micros(when), *_TERMINAL),
            ).fetchall()
        return (JobRecord.model_validate_json(r[0]) for r in rows)

    # --- helpers ------------------------------------------------------------------------

    def _get_locked(self, conn: SqlConn, job_id: str) -> JobRecord | None:
        """The current record, its row locked until the transaction ends (the compare of
        compare-and-set)."""
        sql = "SELECT record FROM jobs WHERE id = ?" + self._ROW_LOCK
        return _record(conn.execute(sql, (job_id,)).fetchone())


def _save(conn: SqlConn, current: JobRecord, fields: dict[str, Any]) -> JobRecord:
    merged = merge_fields(current, fields)
    conn.execute(
        "UPDATE jobs SET status = ?, started_us = ?, finished_us = ?, files_expired = ?,"
        " tenant = ?, stored_bytes = ?, notify_due = ?, record = ? WHERE id = ?",
        (*tenancy_sql.indexed_columns(merged), merged.model_dump_json(), merged.id),
    )
    return merged


class _Access:
    """The store's connections, for the tenant, key and delivery tables beside the jobs."""

    def __init__(self, store: SqlJobStore) -> None:
        self._store = store

    def write(self) -> AbstractContextManager[SqlConn]:
        return self._store._write()

    def read(self) -> AbstractContextManager[SqlConn]:
        return self._store._read()
