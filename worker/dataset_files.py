"""A job's uploaded dataset as a local file, for the job process.

On a local (or mounted) blob store the stored file is used in place. On a remote one (S3)
each worker host keeps one copy per sha256 under ``data_dir/dataset-cache/``: the first job
on a dataset downloads it (and checks its sha256), later jobs on the same bytes read the copy.
A cache hit touches the copy, so its mtime says when a job last used it; the janitor
(``worker/janitor.py``) removes a copy no queued job and no job running here needs once it
is unused for ``dataset_cache_max_age_s``, or at once when no dataset holds its sha256 any
more. The folder may also be emptied by hand at any time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.datasets.record import DATASET_FILE, DatasetRecord
from core.datasets.store import DatasetStore
from core.jobs.record import JobRecord
from core.settings import Settings
from core.storage.digest import sha256_file
from core.storage.protocols import BlobStore, JobStore

CACHE_DIR = "dataset-cache"


class DatasetGone(Exception):
    """The job's dataset was deleted, or its stored file does not match its record."""


def dataset_file(store: JobStore, blobs: BlobStore, job: JobRecord,
                 settings: Settings) -> tuple[Path, DatasetRecord] | None:
    """The local file and record of the job's uploaded dataset (None: a built-in one)."""
    if not job.spec.data.uploaded:
        return None
    record = DatasetStore(store.sql()).get(job.spec.data.dataset, job.tenant)
    if record is None or not blobs.exists(record.id, DATASET_FILE):
        raise DatasetGone(f"dataset {job.spec.data.dataset} is no longer stored")
    if blobs.files_are_local:
        return blobs.local_path(record.id, DATASET_FILE), record
    return _cached(blobs, record, settings.data_dir / CACHE_DIR), record


def _cached(blobs: BlobStore, record: DatasetRecord, folder: Path) -> Path:
    target = folder / record.sha256
    if target.is_file() and target.stat().st_size == record.bytes:
        os.utime(target)  # used now: the janitor keeps it another dataset_cache_max_age_s
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{record.sha256}-{os.getpid()}"
    try:
        shutil.copyfile(blobs.local_path(record.id, DATASET_FILE), tmp)
        if sha256_file(tmp) != record.sha256:
            raise DatasetGone(f"dataset {record.id}: the stored file does not match its sha256")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        blobs.drop_local_copies(record.id)
    return target
