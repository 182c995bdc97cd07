"""Job records in PostgreSQL: the ``JobStore`` of ``core/storage/protocols.py`` for several hosts.

Selected by ``PRUNER_DATABASE_URL=postgresql://...`` (``core/storage/backends.py``). The semantics
are
the SQLite store's, kept by the same contract tests (api_tests/core/test_store_contract.py):

- compare-and-set: ``transition`` and ``update`` read the row ``FOR UPDATE`` and write it in
  one transaction, so two workers racing for a job serialise on the row lock;
- ``create`` takes a transaction-scoped advisory lock first, which serialises creates the way
  ``BEGIN IMMEDIATE`` does in SQLite: the queue-depth count and the idempotency-key lookup
  are inside that transaction, so a burst never overshoots ``max_queued`` and concurrent
  duplicates make one job (the unique index on the key is the backstop);
- the record is stored whole as JSON text; the columns beside it index and filter.

Each process holds a small pool (``POOL_MAX`` connections): the API's request threads share
it, a worker and each job process use one or two. Connections are checked before they are
handed out (``_checkout``: no round trip), so after a PostgreSQL restart the first query gets a
fresh connection rather than a dead one. A pool belongs to the process that opened it: a
forked child opens its own.
A database that cannot be reached raises ``StoreUnavailable`` (the API answers 503).
The schema migrations (``core/storage/pg_migrate.py``) run on the first connection a process makes.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from core.jobs.record import JobRecord, JobStatus
from core.storage.pg_migrate import migrate
from core.storage.protocols import (
    Histogram,
    IdempotencyConflict,
    JobStore,
    QueueLimitReached,
    StoreUnavailable,
    merge_fields,
)
from core.storage.sql import PgConn, SqlAccess, SqlConn, micros
from core.storage.sqlite import MAX_PAGE, decode_cursor, encode_cursor
from core.tenants import scheduling as tenancy_sql
from core.tenants.quotas import Quota, RunningLimits

POOL_MAX = 8
CONNECT_TIMEOUT_S = 5  # a database that is down answers fast, not after the default minutes
POOL_WAIT_S = 3.0  # wait this long for a pooled connection, then 503 (a down database too)
CREATE_LOCK = 0x7072756E6572636A  # advisory lock serialising creates: "prunercj"

_TERMINAL = [s.value for s in JobStatus if s.terminal]
_UNFINISHED = [s.value for s in JobStatus if not s.terminal]

Conn = psycopg.Connection[tuple[Any, ...]]


class PostgresJobStore:
    """``JobStore`` on PostgreSQL; safe across threads, processes and hosts."""

    reads_are_local = False  # a round trip: never on the API's event loop

    def __init__(self, url: str, *, pool_max: int = POOL_MAX) -> None:
        self.url = url
        self.pool_max = pool_max
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Conn] | None = None
        self._pid = 0
        self._migrated = False

    # --- connections --------------------------------------------------------------------

    def _pool_here(self) -> ConnectionPool[Conn]:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                # A pool inherited through fork is the parent's: leave it alone, open ours.
                self._pool = ConnectionPool(
                    self.url, min_size=0, max_size=self.pool_max, open=True,
                    timeout=POOL_WAIT_S,
                    kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "autocommit": True},
                    name="pruner-jobs",
                )
                self._pid = os.getpid()
            return self._pool

    def _checkout(self) -> Conn:
        """A live connection from the pool. One the server cut while it sat idle (a
        PostgreSQL restart) is closed and given back, which makes the pool drop it, and the
        next is taken at once: after a restart every idle connection is dead, and the pool's
        own check loop would sleep 1 s, 2 s... between them."""
        pool = self._pool_here()
        for _ in range(self.pool_max + 1):  # at most every pooled one is dead, then a new one
            conn = pool.getconn()
            if not _cut(conn):
                return conn
            conn.close()
            pool.putconn(conn)
        raise psycopg.OperationalError("no live connection to PostgreSQL")

    @contextmanager
    def _conn(self) -> Iterator[Conn]:
        try:
            conn = self._checkout()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        try:
            with conn:  # a pooled connection: the block ends its transaction, never closes it
                if not self._migrated:
                    # On first use, not in __init__: a process whose database is down at
                    # start still starts (the API answers 503 and /readyz says why).
                    migrate(conn)
                    self._migrated = True
                yield conn
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc
        finally:
            self._pool_here().putconn(conn)

    @contextmanager
    def _write(self) -> Iterator[Conn]:
        """One short transaction (committed on exit, rolled back on an exception)."""
        with self._conn() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None

    def sql(self) -> SqlAccess:
        return _PgAccess(self)

    def ping(self) -> None:
        with self._conn() as conn:
            conn.execute("SELECT 1")

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
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (CREATE_LOCK,))
            if key is not None:
                row = conn.execute(
                    "SELECT request_hash, record FROM jobs WHERE idempotency_key = %s", (key,),
                ).fetchone()
                if row is not None:
                    if row[0] != request_hash:
                        raise IdempotencyConflict(idempotency_key)
                    return JobRecord.model_validate_json(row[1]), False
            if max_queued is not None:
                row = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = %s",
                                   (JobStatus.QUEUED.value,)).fetchone()
                queued = int(row[0]) if row else 0
                if queued >= max_queued:
                    raise QueueLimitReached(queued)
            if quota is not None:
                tenancy_sql.check_quota(PgConn(conn), record, quota, micros(record.created_at))
            conn.execute(
                "INSERT INTO jobs (id, created_us, status, started_us, finished_us,"
                " files_expired, tenant, stored_bytes, notify_due, idempotency_key,"
                " request_hash, record)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (record.id, micros(record.created_at), *tenancy_sql.indexed_columns(record),
                 key, request_hash, record.model_dump_json()),
            )
        return record, True

    def get(self, job_id: str, *, tenant: str | None = None) -> JobRecord | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT record FROM jobs WHERE id = %s AND (%s::text IS NULL OR tenant = %s)",
                (job_id, tenant, tenant)).fetchone()
        return None if row is None else JobRecord.model_validate_json(row[0])

    def next_queued(self, running_limits: RunningLimits) -> str | None:
        with self._conn() as conn:
            return tenancy_sql.next_queued(PgConn(conn), running_limits)

    def notify_due(self) -> list[JobRecord]:
        with self._conn() as conn:
            return tenancy_sql.notify_due(PgConn(conn))

    def list(
        self, *, status: JobStatus | None = None, limit: int = 20, cursor: str | None = None,
        tenant: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        limit = max(1, min(limit, MAX_PAGE))
        after = decode_cursor(cursor) if cursor is not None else None
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT created_us, id, record FROM jobs"
                " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
                " AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
                " AND (%(c_us)s::bigint IS NULL OR (created_us, id) < (%(c_us)s, %(c_id)s))"
                " ORDER BY created_us DESC, id DESC LIMIT %(n)s",
                {"status": None if status is None else status.value, "tenant": tenant,
                 "c_us": None if after is None else after[0],
                 "c_id": None if after is None else after[1], "n": limit + 1},
            ).fetchall()
        page = [JobRecord.model_validate_json(r[2]) for r in rows[:limit]]
        if len(rows) <= limit:
            return page, None
        return page, encode_cursor(rows[limit - 1][0], rows[limit - 1][1])

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        with self._write() as conn:
            current = _get_for_update(conn, job_id)
            if current is None:
                raise KeyError(job_id)
            return _save(conn, current, fields)

    def transition(
        self, job_id: str, from_statuses: set[JobStatus], to: JobStatus, **fields: Any
    ) -> JobRecord | None:
        with self._write() as conn:
            current = _get_for_update(conn, job_id)
            if current is None or current.status not in from_statuses:
                return None
            return _save(conn, current, {**fields, "status": to})

    def delete(self, job_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,)).rowcount > 0

    def duration_histogram(self, buckets: tuple[float, ...]) -> dict[JobStatus, Histogram]:
        columns: list[sql.Composable] = [
            sql.SQL("status"), sql.SQL("COUNT(*)"), sql.SQL("COALESCE(SUM(d), 0)")]
        columns += [sql.SQL("COUNT(*) FILTER (WHERE d <= {})").format(sql.Literal(float(b)))
                    for b in buckets]
        query = sql.SQL(
            "SELECT {} FROM (SELECT status, (finished_us - started_us) / 1e6 AS d FROM jobs"
            " WHERE started_us IS NOT NULL AND finished_us IS NOT NULL) t GROUP BY status"
        ).format(sql.SQL(", ").join(columns))
        with self._conn() as conn:
            rows = conn.execute(query).fetchall()
        out: dict[JobStatus, Histogram] = {}
        for status, count, total, *cumulative in rows:
            out[JobStatus(status)] = ([int(c) for c in cumulative], int(count), float(total))
        return out

    def counts_by_status(self) -> dict[JobStatus, int]:
        counts = dict.fromkeys(JobStatus, 0)
        with self._conn() as conn:
            for status, n in conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
                counts[JobStatus(status)] = int(n)
        return counts

    def unfinished(self) -> Iterator[JobRecord]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT record FROM jobs WHERE status = ANY(%s) ORDER BY created_us",
                (_UNFINISHED,),
            ).fetchall()
        return (JobRecord.model_validate_json(r[0]) for r in rows)

    def finished_before(self, when: datetime) -> Iterator[JobRecord]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT record FROM jobs WHERE NOT files_expired AND finished_us < %s"
                " AND status = ANY(%s) ORDER BY finished_us",
                (micros(when), _TERMINAL),
            ).fetchall()
        return (JobRecord.model_validate_json(r[0]) for r in rows)


# --- helpers ----------------------------------------------------------------------------

def _cut(conn: Conn) -> bool:
    """Whether the server closed this idle connection, found without a round trip: its
    socket is readable (the server's goodbye, then EOF). The pool's own ``check_connection``
    sends an empty query instead, a round trip on every checkout, which measured here halved
    the API's reads (593 against 500 requests/s, and paced p99 18.3 against 554 ms,
    benchmarks/results/api_latency_postgres.json)."""
    if conn.closed or conn.broken:
        return True
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return bool(readable)


def _get_for_update(conn: Conn, job_id: str) -> JobRecord | None:
    """The current record, its row locked until the transaction ends (the compare of CAS)."""
    row = conn.execute("SELECT record FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
    return None if row is None else JobRecord.model_validate_json(row[0])


def _save(conn: Conn, current: JobRecord, fields: dict[str, Any]) -> JobRecord:
    merged = merge_fields(current, fields)
    conn.execute(
        "UPDATE jobs SET status = %s, started_us = %s, finished_us = %s, files_expired = %s,"
        " tenant = %s, stored_bytes = %s, notify_due = %s, record = %s WHERE id = %s",
        (*tenancy_sql.indexed_columns(merged), merged.model_dump_json(), merged.id),
    )
    return merged


class _PgAccess:
    def __init__(self, store: PostgresJobStore) -> None:
        self._store = store

    @contextmanager
    def write(self) -> Iterator[SqlConn]:
        with self._store._write() as conn:
            yield PgConn(conn)

    @contextmanager
    def read(self) -> Iterator[SqlConn]:
        with self._store._conn() as conn:
            yield PgConn(conn)


if TYPE_CHECKING:
    _access: type[SqlAccess] = _PgAccess
    _conforms: type[JobStore] = PostgresJobStore  # mypy proves the Protocol is met
