"""Versioned schema migrations for the PostgreSQL job store: numbered SQL files, applied once.

Why not Alembic: our schema is one table written in plain SQL, we have no ORM models for
Alembic to diff against, and the API image would gain SQLAlchemy and Alembic for what is a
loop over files. The runner below is the whole mechanism:

- ``core/storage/migrations/NNNN_name.sql``, applied in number order; ``schema_migrations`` records
  each applied version, so a file never runs twice and a new file runs once on the next start.
- Every process (API, each worker, each job process) calls ``migrate`` at start. They may start
  at once: the first takes a transaction-scoped advisory lock (``pg_advisory_xact_lock``), the
  others wait on it and then find nothing left to apply. Each file runs in that same
  transaction (PostgreSQL DDL is transactional), so a failed migration leaves no half schema.
- Migrations only add: a released file is never edited (a new number fixes it).
"""

from __future__ import annotations

import re
from importlib import resources

import psycopg

# Any fixed 64-bit number only we use: "pruner migrations".
MIGRATION_LOCK = 0x7072756E65726D67
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration, in version order."""
    folder = resources.files("core.storage").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {sorted(versions)}")
    return sorted(found)


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """Apply the migrations this database lacks; return the versions applied now."""
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            conn.execute(sql.encode())  # several statements: no parameters, simple protocol
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                         (version, name))
            applied_now.append(version)
    return applied_now
