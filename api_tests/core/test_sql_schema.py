"""The tables both databases share are written once (core/storage/sql.py SHARED_SCHEMA): SQLite runs
it at open, PostgreSQL's migration 0002 holds it word for word (a released migration never
changes, so the two must not drift)."""

from __future__ import annotations

from core.storage.pg_migrate import migration_files
from core.storage.sql import DATASET_SCHEMA, SHARED_SCHEMA, TENANT_COLUMNS, statements


def test_migration_0002_holds_the_shared_schema_word_for_word() -> None:
    (_, name, sql), = [m for m in migration_files() if m[0] == 2]
    assert name == "0002_tenants.sql"
    code = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    migration = statements(code)
    for statement in statements(SHARED_SCHEMA):
        assert statement in migration, statement
    for column, definition in TENANT_COLUMNS:  # and adds the columns SQLite adds
        assert f"ALTER TABLE jobs ADD COLUMN {column} {definition}" in migration


def test_migration_0003_holds_the_dataset_schema_word_for_word() -> None:
    (_, name, sql), = [m for m in migration_files() if m[0] == 3]
    code = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    assert (name, statements(code)) == ("0003_datasets.sql", statements(DATASET_SCHEMA))
