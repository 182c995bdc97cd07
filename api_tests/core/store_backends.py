"""The job-store backends every store test runs against: a picklable factory per backend
whose ``open()`` gives a fresh handle on one empty store (the cross-process tests open it in
other processes). A backend joins by one more entry in ``BACKENDS``; the ``backend`` and
``store`` fixtures (api_tests/core/conftest.py) run each test once per entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from core.storage.postgres import PostgresJobStore
from core.storage.protocols import JobStore
from core.storage.sqlite import SqliteJobStore


class Backend(Protocol):
    def open(self) -> JobStore: ...


@dataclass(frozen=True)
class SqliteBackend:
    path: Path

    def open(self) -> JobStore:
        return SqliteJobStore(self.path)


@dataclass(frozen=True)
class PostgresBackend:
    url: str  # its own schema on the session's PostgreSQL (testkit.servers.PostgresServer)

    def open(self) -> JobStore:
        return PostgresJobStore(self.url, pool_max=4)


# Each factory gets the test's request (for session fixtures such as ``postgres_server``)
# and its tmp_path.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "sqlite": lambda _, tmp: SqliteBackend(tmp / "jobs.sqlite3"),
    "postgres": lambda req, _: PostgresBackend(req.getfixturevalue("postgres_server").url()),
}
