"""Job records in SQLite: the ``JobStore`` of ``core/storage/protocols.py``.

One database file (``data_dir/jobs.sqlite3``) in WAL mode is opened by every process that
touches jobs: the API, the Celery worker and each job process. WAL lets readers run while a
writer commits, ``busy_timeout`` makes concurrent writers wait instead of failing, and every
write is one short ``BEGIN IMMEDIATE`` transaction, so compare-and-set is real even across
processes. Each thread (and each forked process) gets its own connection: sqlite3
connections must not be shared across threads or a fork.

The record is stored whole as JSON; the columns beside it exist only to index and filter.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.jobs.record import JobRecord, JobStatus
from core.settings import Settings
from core.storage.protocols import (
    Histogram,
    IdempotencyConflict,
    JobStore,
    QueueLimitReached,
    StoreUnavailable,
    merge_fields,
)
from core.storage.sql import SHARED_SCHEMA, TENANT_COLUMNS, SqlAccess, SqlConn, micros, statements
from core.tenants import scheduling as tenancy_sql
from core.tenants.quotas import Quota, RunningLimits

DB_NAME = "jobs.sqlite3"
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    started_us INTEGER,
    finished_us INTEGER,
    files_expired INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_us) WHERE files_expired = 0;
"""

_TERMINAL = tuple(s.value for s in JobStatus if s.terminal)
_UNFINISHED = tuple(s.value for s in JobStatus if not s.terminal)
MAX_PAGE = 200


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


def _enter_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode, waiting out other processes that open it at once.

    Switching a new database to WAL needs an exclusive lock, and SQLite answers
    ``SQLITE_BUSY`` for it at once, without calling the busy handler, while another
    connection holds the lock or runs WAL recovery. ``python -m stack`` starts the API and
    the worker together on a fresh data dir, so this happens: retry for the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class SqliteJobStore:
    """``JobStore`` backed by one SQLite file; safe across threads and processes."""

    reads_are_local = True

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._init_schema()

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteJobStore:
        return cls(settings.data_dir / DB_NAME)

    # --- connections --------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enter_wal(conn)
            # FULL: a commit is fsynced before it returns, so a job we answered 202 for
            # survives even a power cut (NORMAL would only survive a process crash). It
            # costs ~2 ms per write here; the read path, which clients hammer, is unaffected.
            conn.execute("PRAGMA synchronous = FULL")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _init_schema(self) -> None:
        with self._write() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            if columns and "started_us" not in columns:  # a database from before 0.1.0
                conn.execute("ALTER TABLE jobs ADD COLUMN started_us INTEGER")
                conn.execute(
                    "UPDATE jobs SET started_us = CAST(ROUND((julianday(json_extract(record,"
                    " '$.started_at')) - 2440587.5) * 86400000000) AS INTEGER)"
                )
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, definition in TENANT_COLUMNS:
                if name not in columns:  # a database from before tenants
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
                    if name == "tenant":  # keys were global then: they become local's
                        conn.execute("UPDATE jobs SET idempotency_key = 'local/' ||"
                                     " idempotency_key WHERE idempotency_key IS NOT NULL")
                    if name == "stored_bytes":
                        conn.execute("UPDATE jobs SET stored_bytes = json_extract(record,"
                                     " '$.upload_bytes') WHERE files_expired = 0")
            for statement in statements(SHARED_SCHEMA):
                conn.execute(statement)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; IMMEDIATE takes the write lock up front, so a
        read-then-write inside it cannot interleave with another writer."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    def sql(self) -> SqlAccess:
        return _SqliteAccess(self)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        yield self._conn()

    def ping(self) -> None:
        try:
            self._conn().execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc

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
            if key is not None:
                row = conn.execute(
                    "SELECT request_hash, record FROM jobs WHERE idempotency_key = ?", (key,),
                ).fetchone()
                if row is not None:
                    if row[0] != request_hash:
                        raise IdempotencyConflict(idempotency_key)
                    return JobRecord.model_validate_json(row[1]), False
            if max_queued is not None:
                # Counted inside the write transaction (BEGIN IMMEDIATE serialises writers
                # across processes), so a burst cannot overshoot the limit.
                (queued,) = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = ?", (JobStatus.QUEUED.value,)
                ).fetchone()
                if queued >= max_queued:
                    raise QueueLimitReached(queued)
            if quota is not None:
                tenancy_sql.check_quota(conn, record, quota, micros(record.created_at))
            conn.execute(
                "INSERT INTO jobs (id, created_us, status, started_us, finished_us,"
                " files_expired, tenant, stored_bytes, notify_due, idempotency_key,"
                " request_hash, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, micros(record.created_at), *tenancy_sql.indexed_columns(record),
                 key, request_hash, record.model_dump_json()),
            )
        return record, True

    def get(self, job_id: str, *, tenant: str | None = None) -> JobRecord | None:
        if tenant is None:
            row = self._conn().execute("SELECT record FROM jobs WHERE id = ?",
                                       (job_id,)).fetchone()
        else:
            row = self._conn().execute("SELECT record FROM jobs WHERE id = ? AND tenant = ?",
                                       (job_id, tenant)).fetchone()
        return None if row is None else JobRecord.model_validate_json(row[0])

    def next_queued(self, running_limits: RunningLimits) -> str | None:
        return tenancy_sql.next_queued(self._conn(), running_limits)

    def notify_due(self) -> list[JobRecord]:
        return tenancy_sql.notify_due(self._conn())

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
        rows = self._conn().execute(sql, (*params, limit + 1)).fetchall()
        page = [JobRecord.model_validate_json(r[2]) for r in rows[:limit]]
        if len(rows) <= limit:
            return page, None
        return page, encode_cursor(rows[limit - 1][0], rows[limit - 1][1])

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        with self._write() as conn:
            current = self._get_locked(conn, job_id)
            if current is None:
                raise KeyError(job_id)
            return self._save(conn, current, fields)

    def transition(
        self, job_id: str, from_statuses: set[JobStatus], to: JobStatus, **fields: Any
    ) -> JobRecord | None:
        with self._write() as conn:
            current = self._get_locked(conn, job_id)
            if current is None or current.status not in from_statuses:
                return None
            return self._save(conn, current, {**fields, "status": to})

    def delete(self, job_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def duration_histogram(
        self, buckets: tuple[float, ...]
    ) -> dict[JobStatus, Histogram]:
        cases = ", ".join(f"SUM(d <= {float(b)!r})" for b in buckets)
        sql = (
            f"SELECT status, COUNT(*), COALESCE(SUM(d), 0), {cases} FROM ("
            " SELECT status, (finished_us - started_us) / 1e6 AS d FROM jobs"
            " WHERE started_us IS NOT NULL AND finished_us IS NOT NULL) GROUP BY status"
        )
        out: dict[JobStatus, Histogram] = {}
        for status, count, total, *cumulative in self._conn().execute(sql):
            out[JobStatus(status)] = ([int(c or 0) for c in cumulative], count, float(total))
        return out

    def counts_by_status(self) -> dict[JobStatus, int]:
        counts = dict.fromkeys(JobStatus, 0)
        for status, n in self._conn().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            counts[JobStatus(status)] = n
        return counts

    def unfinished(self) -> Iterator[JobRecord]:
        marks = ",".join("?" * len(_UNFINISHED))
        rows = self._conn().execute(
            f"SELECT record FROM jobs WHERE status IN ({marks}) ORDER BY created_us", _UNFINISHED
        ).fetchall()
        return (JobRecord.model_validate_json(r[0]) for r in rows)

    def finished_before(self, when: datetime) -> Iterator[JobRecord]:
        marks = ",".join("?" * len(_TERMINAL))
        rows = self._conn().execute(
            f"SELECT record FROM jobs WHERE files_expired = 0 AND finished_us < ?"
            f" AND status IN ({marks}) ORDER BY finished_us",
            (micros(when), *_TERMINAL),
        ).fetchall()
        return (JobRecord.model_validate_json(r[0]) for r in rows)

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def _get_locked(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.model_validate_json(row[0])

    def _save(
        self, conn: sqlite3.Connection, current: JobRecord, fields: dict[str, Any]
    ) -> JobRecord:
        merged = merge_fields(current, fields)
        conn.execute(
            "UPDATE jobs SET status = ?, started_us = ?, finished_us = ?, files_expired = ?,"
            " tenant = ?, stored_bytes = ?, notify_due = ?, record = ? WHERE id = ?",
            (*tenancy_sql.indexed_columns(merged), merged.model_dump_json(), merged.id),
        )
        return merged


class _SqliteAccess:
    def __init__(self, store: SqliteJobStore) -> None:
        self._store = store

    def write(self) -> AbstractContextManager[SqlConn]:
        return self._store._write()

    def read(self) -> AbstractContextManager[SqlConn]:
        return self._store._read()


if TYPE_CHECKING:
    _access: type[SqlAccess] = _SqliteAccess
    _conforms: type[JobStore] = SqliteJobStore  # mypy proves the Protocol is met
