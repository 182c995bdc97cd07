"""Storage interfaces: job records and job files.

By default job records and files live in ``Settings.data_dir``, shared by the API and the
workers (a volume in docker-compose), so they survive restarts of the API, the workers and
Redis; with PostgreSQL and S3 they live off the hosts (docs/operations.md, "Several hosts"). The
interfaces are narrow on purpose: an S3-compatible ``BlobStore`` can replace the local one
without touching routes or tasks. File paths are derived from job ids (which we generate),
never from client-supplied names.

Implementations: ``core/storage/jobs_sql.py`` with its backends ``core/storage/sqlite.py``
and ``core/storage/postgres.py`` (records), ``core/storage/blobs.py`` and
``core/storage/blobs_s3.py`` (files); ``core/storage/backends.py`` picks them from the
settings. Every implementation must pass the contract tests,
api_tests/core/test_store_contract.py and test_blob_contract.py: add a backend as one more
fixture parameter there.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from core.jobs.formats import ModelFormat
from core.jobs.record import JobRecord, JobStatus
from core.storage.sql import SqlAccess
from core.tenants.quotas import Quota, RunningLimits

# A duration histogram: cumulative counts per bucket upper bound, count, sum (the Prometheus
# histogram shape).
Histogram = tuple[list[int], int, float]

# File names inside a job's folder.
UPLOAD = "upload"
REPORT = "report.json"


def model_file(fmt: ModelFormat | str) -> str:
    """File name of the pruned model in a given format (``core.jobs.formats`` holds the table)."""
    return ModelFormat(fmt).file_name


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request body."""


class StoreUnavailable(Exception):
    """The job store (or the object store) cannot be reached now: the API answers 503 with
    Retry-After; nothing was recorded by the call that raised it."""


def merge_fields(current: JobRecord, fields: dict[str, Any]) -> JobRecord:
    """``current`` with ``fields`` set, re-validated so a wrong value fails at the write, not
    on the next read; the id and unknown fields are refused (``ValueError``)."""
    refused = (set(fields) - set(JobRecord.model_fields)) | ({"id"} & set(fields))
    if refused:
        raise ValueError(f"cannot set job record fields: {sorted(refused)}")
    return JobRecord.model_validate({**dict(current), **fields})


class QueueLimitReached(Exception):
    """``create`` refused a job: ``max_queued`` jobs are already queued."""

    def __init__(self, queued: int) -> None:
        super().__init__(f"{queued} jobs are queued")
        self.queued = queued


class DatasetMissing(Exception):
    """``create`` refused a job: its spec names an uploaded dataset that is not (or no longer)
    one of its tenant's. Decided in the insert's transaction, so a dataset deleted between
    the API's check and the insert cannot leave a job that fails later."""

    def __init__(self, dataset_id: str) -> None:
        super().__init__(f"no dataset {dataset_id!r}")
        self.dataset_id = dataset_id


class JobStore(Protocol):
    # True when a read is a local file read of microseconds (SQLite): the API then reads on
    # its event loop; a networked store (PostgreSQL) is read from the thread pool instead.
    reads_are_local: bool

    def create(
        self,
        record: JobRecord,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        max_queued: int | None = None,
        quota: Quota | None = None,
    ) -> tuple[JobRecord, bool]:
        """Insert ``record``; with a key already used by the record's tenant for the same
        request hash, return the existing job and ``False``; with a different hash raise
        ``IdempotencyConflict``; with ``max_queued`` jobs already queued raise
        ``QueueLimitReached``; over one of the tenant's ``quota`` limits raise
        ``QuotaExceeded``; when the spec names an uploaded dataset the tenant does not hold
        raise ``DatasetMissing`` (the dataset's row is locked until the insert commits, so
        ``DatasetStore.delete`` cannot interleave). Atomic: concurrent duplicates create one
        job, concurrent submissions never overshoot a limit."""
        ...

    def get(self, job_id: str, *, tenant: str | None = None) -> JobRecord | None:
        """The job; with ``tenant``, only when it is that tenant's (filtered in the query)."""
        ...

    def list(
        self, *, status: JobStatus | None = None, limit: int = 20, cursor: str | None = None,
        tenant: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first (only ``tenant``'s jobs when given); returns the page and the cursor
        of the next page (None at the end)."""
        ...

    def next_queued(self, running_limits: RunningLimits) -> str | None:
        """The queued job fair scheduling runs next (core/tenants/scheduling.py), or None."""
        ...

    def notify_due(self) -> builtins.list[JobRecord]:
        """Terminal jobs whose webhook delivery is not recorded yet."""
        ...

    def sql(self) -> SqlAccess:
        """The store's database for the tables beside the jobs (tenants, keys, deliveries)."""
        ...

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Set the given JobRecord fields (pydantic values are serialised)."""
        ...

    def transition(
        self, job_id: str, from_statuses: set[JobStatus], to: JobStatus, **fields: Any
    ) -> JobRecord | None:
        """Compare-and-set: move to ``to`` (and set ``fields``) only when the current status is
        in ``from_statuses``; return the new record, or None when it was not."""
        ...

    def delete(self, job_id: str) -> bool:
        """Remove a record (only for a submission that was never accepted: the broker refused
        it); True when it existed."""
        ...

    def counts_by_status(self) -> dict[JobStatus, int]: ...

    def duration_histogram(self, buckets: tuple[float, ...]) -> dict[JobStatus, Histogram]:
        """Run time (started -> finished) of terminal jobs, per status: cumulative counts per
        bucket upper bound (seconds), total count and sum in seconds. Computed from the
        records, so every API process reports the same figures whichever process ran the
        job. Statuses without a job that ran are absent."""
        ...

    def unfinished(self) -> Iterator[JobRecord]:
        """Jobs not in a terminal status (for the reconciler)."""
        ...

    def finished_before(self, when: datetime) -> Iterator[JobRecord]:
        """Terminal jobs finished before ``when`` whose files are not yet expired."""
        ...

    def close(self) -> None:
        """Release this process's connections (the API calls it at shutdown)."""
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the store cannot be reached (readiness)."""
        ...


class BlobStore(Protocol):
    # True when ``local_path`` is the stored file itself (a local or mounted directory): the
    # API then serves downloads as files; a remote store's downloads stream from ``read``.
    files_are_local: bool

    def writer(self, job_id: str, name: str) -> AbstractContextManager[BinaryIO]:
        """Write a job file atomically: it appears under its name only when the block exits
        without an exception."""
        ...

    def open(self, job_id: str, name: str) -> BinaryIO: ...

    def exists(self, job_id: str, name: str) -> bool: ...

    def size(self, job_id: str, name: str) -> int: ...

    def local_path(self, job_id: str, name: str) -> Path:
        """A local file path for ``name`` (a remote store downloads it to scratch first)."""
        ...

    def read(
        self, job_id: str, name: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive; None: to the last) of ``name``, in chunks,
        straight from the store (no local copy). The store is reached before this returns,
        so an unreachable one raises ``StoreUnavailable`` before any byte is sent."""
        ...

    def drop_local_copies(self, job_id: str) -> None:
        """Delete this process's local copies of the job's files (a remote store's scratch
        cache); the stored files stay. A no-op where the local files are the store."""
        ...

    def local_copies(self) -> dict[str, Path]:
        """The jobs this host keeps local copies of, each with its folder (a remote store's
        cache); empty where the local files are the store."""
        ...

    def job_dir(self, job_id: str) -> Path:
        """A local folder where a worker may write a job's outputs before ``put_file``."""
        ...

    def put_file(self, job_id: str, name: str, source: Path) -> None:
        """Store a local file under ``name`` (atomic)."""
        ...

    def delete_job_files(self, job_id: str, keep: tuple[str, ...] = ()) -> None:
        """Delete the job's files except those named in ``keep`` (no error when none)."""
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the store cannot be written (readiness)."""
        ...

    def download_url(self, job_id: str, name: str, filename: str) -> str | None:
        """A short-lived URL a client may fetch ``name`` from directly (saved as
        ``filename``), or None when the API must stream it itself."""
        ...
