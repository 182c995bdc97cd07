"""Job records in SQLite: the connections and schema under ``core/storage/jobs_sql.py``.

One database file (``data_dir/jobs.sqlite3``) in WAL mode is opened by every process that
touches jobs: the API, the Celery worker and each job process. WAL lets readers run while a
writer commits, ``busy_timeout`` makes concurrent writers wait instead of failing, and every
write is one short ``BEGIN IMMEDIATE`` transaction, so compare-and-set is real even across
processes. Each thread (and each forked process) gets its own connection: sqlite3
connections must not be shared across threads or a fork.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import Settings
from core.storage.jobs_sql import SqlJobStore
from core.storage.protocols import JobStore, StoreUnavailable
from core.storage.sql import DATASET_SCHEMA, SHARED_SCHEMA, TENANT_COLUMNS, SqlConn, statements

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


class SqliteJobStore(SqlJobStore):
    """``JobStore`` backed by one SQLite file; safe across threads and processes. Every
    write is ``BEGIN IMMEDIATE``, which serialises writers, so creates and compare-and-set
    reads need no further lock."""

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
            for statement in statements(SHARED_SCHEMA) + statements(DATASET_SCHEMA):
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

    def _lock_creates(self, conn: SqlConn) -> None:
        """Nothing to add: ``BEGIN IMMEDIATE`` already serialises every writer."""

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        yield self._conn()

    def ping(self) -> None:
        try:
            self._conn().execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc


if TYPE_CHECKING:
    _conforms: type[JobStore] = SqliteJobStore  # mypy proves the Protocol is met
