"""The supervisor without starting a job process: a delivery with nothing to run is skipped
before any process starts, and the child's environment carries the worker's settings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from api_tests.core.factories import make_record
from core.jobs import JobStatus
from core.lifecycle import Outcome
from core.settings import Settings
from core.store_sqlite import SqliteJobStore
from worker.supervisor import Supervisor


def test_a_delivery_with_nothing_to_run_starts_no_process(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store = SqliteJobStore.from_settings(settings)
    done = make_record(created_at=datetime.now(UTC), status=JobStatus.SUCCEEDED)
    store.create(done)
    supervisor = Supervisor(settings)
    sent: list[str] = []
    assert supervisor.supervise(store, done.id, "w1", sent.append) is Outcome.SKIPPED
    assert supervisor.supervise(store, "0" * 32, "w1", sent.append) is Outcome.SKIPPED
    assert supervisor._standby is None and sent == []
    assert not (tmp_path / "scratch").exists()
