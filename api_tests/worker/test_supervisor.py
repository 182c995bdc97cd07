"""The supervisor without starting a job process: a delivery with nothing to run is skipped
before any process starts, and the child's environment carries the worker's settings."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api_tests.core.factories import make_record
from api_tests.support.outage import Outage
from core.jobs.lifecycle import Outcome, Stop, claim
from core.jobs.record import JobStatus
from core.settings import Settings
from core.storage.sqlite import SqliteJobStore
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


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


@pytest.mark.parametrize("timeout_s", [1, None])
def test_watch_kills_at_the_spec_limit_or_when_the_worker_stops(
    tmp_path: Path, timeout_s: int | None
) -> None:
    """A job process that runs on: killed at the spec's limits.timeout_s when it has one;
    without one, killed (and marked SHUTDOWN) once the worker is asked to stop."""
    settings = Settings(data_dir=tmp_path, job_soft_time_limit_s=60, job_hard_time_limit_s=70,
                        broker_visibility_timeout_s=80)
    store = SqliteJobStore.from_settings(settings)
    spec = {"architecture": "mnist_mlp", "limits": {"timeout_s": timeout_s}}
    record = make_record(created_at=datetime.now(UTC), spec=spec)
    store.create(record)
    held = claim(store, record.id, settings, "w1")
    assert held is not None
    supervisor = Supervisor(settings)
    proc = _sleeper()
    if timeout_s is None:
        threading.Timer(0.5, supervisor.request_stop).start()
    start = time.monotonic()
    returncode, stop = supervisor.watch(proc, held)
    elapsed = time.monotonic() - start
    assert returncode == -signal.SIGKILL and proc.poll() is not None
    if timeout_s is None:
        assert stop is Stop.SHUTDOWN and 0.5 <= elapsed < 2
    else:
        assert stop is Stop.TIMED_OUT and 1 <= elapsed < 3


def test_a_store_outage_neither_kills_the_job_process_nor_loses_the_lease(
    tmp_path: Path,
) -> None:
    """Renewals that meet an unavailable store (a PostgreSQL restart) are tried again a
    second later; the job process runs on to its own exit, and the lease is renewed once the
    store is back."""
    settings = Settings(data_dir=tmp_path, job_lease_s=3.0)  # a renewal every second
    store = SqliteJobStore.from_settings(settings)
    record = make_record(created_at=datetime.now(UTC))
    store.create(record)
    held = claim(store, record.id, settings, "w1")
    assert held is not None
    claimed = store.get(record.id)
    assert claimed is not None and claimed.lease_expires_at is not None
    down = Outage(store, reads=3)  # the limits read (retried at once) and two renewals refused
    held.store = down
    proc = subprocess.Popen(["sleep", "3.8"])  # renewals at ~1.2 s (refused), 2.2 (refused), 3.2
    returncode, stop = Supervisor(settings).watch(proc, held)
    assert (returncode, stop) == (0, Stop.EXITED)
    assert down.reads == 0 and down.refused == 3
    renewed = store.get(record.id)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > claimed.lease_expires_at
    assert renewed.status is JobStatus.RUNNING and renewed.attempts == 1
