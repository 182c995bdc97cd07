"""A job's dataset as a local file (``worker.dataset_files``): in place on a local store, one
cached copy per sha256 on a remote one, gone when deleted."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from api_tests.core.datasets.factories import make_dataset
from api_tests.core.factories import make_record
from core.datasets.record import DATASET_FILE
from core.datasets.store import DatasetStore
from core.jobs.record import JobRecord
from core.jobs.spec import REFERENCE_RECIPE, DataSpec
from core.settings import Settings
from core.storage.blobs import LocalBlobStore
from core.storage.sqlite import SqliteJobStore
from worker.dataset_files import CACHE_DIR, DatasetGone, dataset_file

BYTES = b"pretend dataset bytes"


class RemoteLike(LocalBlobStore):
    """A local store that says it is remote: callers must not use its files in place."""

    files_are_local = False


def setup(tmp_path: Path, blobs: LocalBlobStore) -> tuple[SqliteJobStore, JobRecord]:
    store = SqliteJobStore(tmp_path / "db.sqlite3")
    record = make_dataset("acme", size=len(BYTES)).model_copy(
        update={"sha256": hashlib.sha256(BYTES).hexdigest()})
    DatasetStore(store.sql()).create(record)
    with blobs.writer(record.id, DATASET_FILE) as f:
        f.write(BYTES)
    spec = REFERENCE_RECIPE.model_copy(update={"data": DataSpec(dataset=record.id)})
    return store, make_record(tenant="acme", spec=spec)


def test_a_local_store_file_is_used_in_place(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "jobs")
    store, job = setup(tmp_path, blobs)
    found = dataset_file(store, blobs, job, Settings(data_dir=tmp_path))
    assert found is not None and found[0] == blobs.local_path(found[1].id, DATASET_FILE)


def test_a_remote_store_file_is_cached_by_its_sha256(tmp_path: Path) -> None:
    blobs = RemoteLike(tmp_path / "jobs")
    store, job = setup(tmp_path, blobs)
    found = dataset_file(store, blobs, job, Settings(data_dir=tmp_path))
    assert found is not None
    assert found[0] == tmp_path / CACHE_DIR / hashlib.sha256(BYTES).hexdigest()


def test_a_deleted_dataset_is_gone(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "jobs")
    store, job = setup(tmp_path, blobs)
    DatasetStore(store.sql()).delete(job.spec.data.dataset, "acme")
    with pytest.raises(DatasetGone):
        dataset_file(store, blobs, job, Settings(data_dir=tmp_path))


def test_mnist_needs_no_file(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "jobs")
    store = SqliteJobStore(tmp_path / "db.sqlite3")
    assert dataset_file(store, blobs, make_record(), Settings(data_dir=tmp_path)) is None


def test_a_cache_hit_marks_the_copy_used(tmp_path: Path) -> None:
    blobs = RemoteLike(tmp_path / "jobs")
    store, job = setup(tmp_path, blobs)
    settings = Settings(data_dir=tmp_path)
    found = dataset_file(store, blobs, job, settings)
    assert found is not None
    os.utime(found[0], (0, 0))  # last used long ago: the janitor's max age has passed
    dataset_file(store, blobs, job, settings)
    assert found[0].stat().st_mtime > time.time() - 60
