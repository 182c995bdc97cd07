"""The job process rides out a short outage of the job store (a PostgreSQL restart) at the
two moments that decide a job's fate, its first read and its last write, instead of exiting
without an outcome (which the supervisor would count as a crashed attempt)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from api_tests.core.factories import make_record
from api_tests.support.outage import Outage
from api_tests.support.stacks import mnist_root
from core.jobs.lifecycle import claim
from core.jobs.record import JobStatus
from core.settings import Settings
from core.storage.blobs import LocalBlobStore
from core.storage.protocols import UPLOAD, StoreUnavailable
from core.storage.sqlite import SqliteJobStore
from worker import job_process
from worker.engine import registry


@pytest.mark.parametrize("reads, writes", [(3, 2), (0, 0)])
def test_a_job_whose_store_is_down_at_its_start_and_end_succeeds_on_its_first_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: int, writes: int
) -> None:
    settings = Settings(data_dir=tmp_path / "data", mnist_root=mnist_root())
    store = SqliteJobStore.from_settings(settings)
    spec = {"architecture": "mnist_mlp", "finetune": {"epochs": 0},
            "pruning": {"method": "l1_unstructured", "amount": 0.5}}
    record = make_record(created_at=datetime.now(UTC), spec=spec)
    store.create(record)
    upload = tmp_path / "model.pt"
    torch.save(registry.build("mnist_mlp").state_dict(), upload)
    LocalBlobStore.from_settings(settings).put_file(record.id, UPLOAD, upload)
    held = claim(store, record.id, settings, "w1")
    assert held is not None and held.attempt == 1
    down = Outage(store, reads=reads, writes=writes)  # the first read, the outcome's write
    monkeypatch.setattr(job_process, "open_job_store", lambda _settings: down)
    monkeypatch.chdir(tmp_path)
    code = job_process.run(record.id, 1, settings, os.getppid())
    assert code == job_process.EXIT_OK
    assert down.refused == reads + writes and down.reads == down.writes == 0
    done = store.get(record.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED, done
    assert done.attempts == 1


def test_an_outage_longer_than_the_lease_is_not_waited_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the lease another worker's janitor takes the job back: the process stops waiting
    and the error reaches the supervisor (which settles the attempt)."""
    settings = Settings(data_dir=tmp_path / "data", mnist_root=mnist_root(), job_lease_s=0.5)
    store = SqliteJobStore.from_settings(settings)
    record = make_record(created_at=datetime.now(UTC))
    store.create(record)
    assert claim(store, record.id, settings, "w1") is not None
    down = Outage(store, reads=1000)
    monkeypatch.setattr(job_process, "open_job_store", lambda _settings: down)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreUnavailable):
        job_process.run(record.id, 1, settings, os.getppid())
    assert 2 <= down.refused <= 4  # 0.2 s, then 0.3 s (cut to the deadline), then it gives up
    # As a process: it exits without waiting a second lease to write an outcome it cannot.
    monkeypatch.setattr(job_process, "get_settings", lambda: settings)
    refused = down.refused
    assert job_process.main(["job_process", record.id, "1"]) == job_process.EXIT_STORE_DOWN
    assert 2 <= down.refused - refused <= 4  # run()'s tries only: no fail() after them
    still = store.get(record.id)
    assert still is not None and still.status is JobStatus.RUNNING  # for the supervisor
