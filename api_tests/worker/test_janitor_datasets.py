"""The janitor's sweep of the per-host dataset cache (``data_dir/dataset-cache/<sha256>``):
a copy a queued job or a job running here needs stays; an unneeded one goes once unused for
``dataset_cache_max_age_s``, or at once when no dataset holds its sha256."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery

from api_tests.core.datasets.factories import make_dataset
from api_tests.core.factories import make_record
from core.datasets.store import DatasetStore
from core.jobs.record import JobStatus
from core.jobs.spec import REFERENCE_RECIPE, DataSpec
from core.settings import Settings
from worker.dataset_files import CACHE_DIR
from worker.janitor import Janitor

DAY = 24 * 3600


@pytest.fixture
def janitor(tmp_path: Path) -> Janitor:
    # The sweep reads the store and the disk only: a Redis that is never dialled will do.
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:9/0",
                        janitor_interval_s=1, dataset_cache_max_age_s=DAY)
    return Janitor(settings, Celery("test"), "w1@test")


def cached(janitor: Janitor, sha256: str, age_s: float) -> Path:
    """A cached dataset copy last used ``age_s`` ago."""
    path = janitor.settings.data_dir / CACHE_DIR / sha256
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"dataset")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def dataset_used_by(janitor: Janitor, sha256: str, status: JobStatus | None,
                    worker: str | None = None) -> None:
    """A stored dataset with ``sha256`` and, unless ``status`` is None, a job on it."""
    record = make_dataset("acme").model_copy(update={"sha256": sha256})
    DatasetStore(janitor.store.sql()).create(record)
    if status is None:
        return
    lease = {"attempts": 1, "lease_expires_at": datetime.now(UTC) + timedelta(seconds=30)} \
        if status is JobStatus.RUNNING else {}
    spec = REFERENCE_RECIPE.model_copy(update={"data": DataSpec(dataset=record.id)})
    janitor.store.create(make_record(tenant="acme", status=status, spec=spec, worker=worker,
                                     **lease))


def test_old_unneeded_copies_go_and_needed_or_recent_ones_stay(janitor: Janitor) -> None:
    dataset_used_by(janitor, "a" * 64, JobStatus.QUEUED)
    dataset_used_by(janitor, "b" * 64, JobStatus.RUNNING, worker="w1@test")
    dataset_used_by(janitor, "c" * 64, JobStatus.RUNNING, worker="w9@other-host")
    dataset_used_by(janitor, "d" * 64, JobStatus.SUCCEEDED)
    dataset_used_by(janitor, "e" * 64, None)
    kept = [cached(janitor, "a" * 64, 2 * DAY), cached(janitor, "b" * 64, 2 * DAY),
            cached(janitor, "e" * 64, DAY / 2)]
    gone = [cached(janitor, "c" * 64, 2 * DAY), cached(janitor, "d" * 64, 2 * DAY)]
    assert sorted(janitor.sweep_dataset_cache()) == ["c" * 64, "d" * 64]
    assert [p.exists() for p in kept + gone] == [True, True, True, False, False]


def test_a_copy_of_a_deleted_dataset_goes_at_once(janitor: Janitor) -> None:
    copy = cached(janitor, "f" * 64, age_s=60)  # used a minute ago; no dataset holds it now
    assert (janitor.sweep_dataset_cache(), copy.exists()) == (["f" * 64], False)


def test_a_download_in_progress_waits_the_max_age(janitor: Janitor) -> None:
    download = cached(janitor, ".tmp-" + "f" * 64 + "-123", age_s=60)
    assert (janitor.sweep_dataset_cache(), download.exists()) == ([], True)


def test_a_copy_just_made_waits_a_pass(janitor: Janitor) -> None:
    copy = cached(janitor, "f" * 64, age_s=0)
    assert (janitor.sweep_dataset_cache(), copy.exists()) == ([], True)
