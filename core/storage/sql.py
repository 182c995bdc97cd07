"""One SQL surface over SQLite and PostgreSQL, for the tables both stores share.

The job store (``core/storage/jobs_sql.py``) is written over it once, and each of its
backends (``core/storage/sqlite.py``, ``core/storage/postgres.py``) hands out an
``SqlAccess``: ``write()`` is one transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a
transaction on a pooled connection), ``read()`` a plain connection. Statements are written
once, with ``?`` placeholders and SQL that both engines accept (``ON CONFLICT DO NOTHING``,
partial indexes, integer flags, microsecond integers for times); the PostgreSQL side turns
``?`` into ``%s``. The tenant, key and webhook-delivery tables (``core/tenants/store.py``,
``core/webhooks/deliveries.py``) and the tenant-aware job queries (``core/tenants/scheduling.py``)
use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlConn(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...


class SqlAccess(Protocol):
    def write(self) -> AbstractContextManager[SqlConn]: ...

    def read(self) -> AbstractContextManager[SqlConn]: ...


class PgConn:
    """A psycopg connection taking ``?`` placeholders (our statements have no literal ``?``
    or ``%``)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor:
        cursor: Cursor = self._conn.execute(sql.replace("?", "%s"), tuple(params))
        return cursor


def micros(when: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int | None) -> datetime | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1e6, UTC)


# Tables both engines create from the same text (SQLite at open, PostgreSQL in migration
# 0002, which a test ties to this text).
SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_us BIGINT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    digest TEXT NOT NULL,
    scopes TEXT NOT NULL,
    name TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    last_used_us BIGINT,
    revoked_us BIGINT
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    next_attempt_us BIGINT,
    attempts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_us)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, created_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_tenant_status ON jobs (tenant, status);
CREATE INDEX IF NOT EXISTS jobs_tenant_started ON jobs (tenant, started_us);
CREATE INDEX IF NOT EXISTS jobs_notify_due ON jobs (notify_due) WHERE notify_due = 1
"""

# Datasets (core/datasets/store.py): SQLite creates the table at open, PostgreSQL in migration
# 0003, which a test ties to this text. ``bytes`` counts toward the tenant's storage quota.
DATASET_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS datasets_tenant_created ON datasets (tenant, created_us DESC, id DESC)
"""

# Columns the jobs table gained with tenants (SQLite adds them when missing; PostgreSQL in
# migration 0002).
TENANT_COLUMNS = (
    ("tenant", "TEXT NOT NULL DEFAULT 'local'"),
    ("stored_bytes", "BIGINT NOT NULL DEFAULT 0"),
    ("notify_due", "INTEGER NOT NULL DEFAULT 0"),
)


def statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
