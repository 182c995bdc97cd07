"""Reading one job for a caller: the tenant's own record, and whether its files may be served.

Shared by the JSON routes (``routes/jobs.py``) and the web pages (``routes/web.py``).
"""

from __future__ import annotations

from core.jobs.record import JobRecord, JobStatus
from core.storage.protocols import JobStore
from service.errors import Gone, JobNotFinished, NoModel, NotFound


def load_job(store: JobStore, job_id: str, tenant: str | None) -> JobRecord:
    """The caller's job, or 404 exactly as if it did not exist (another tenant's job too)."""
    record = store.get(job_id, tenant=tenant)
    if record is None:
        raise NotFound(f"no job {job_id!r}")
    return record


def finished_files(record: JobRecord) -> None:
    """Raise unless the job succeeded and its files are still kept."""
    if record.files_expired_at is not None:
        raise Gone(f"the files of job {record.id} expired at "
                   f"{record.files_expired_at.isoformat()} (retention)")
    if not record.status.terminal:
        raise JobNotFinished(f"job {record.id} is {record.status.value}; poll it until it ends")
    if record.status is not JobStatus.SUCCEEDED:
        raise NoModel(f"job {record.id} ended {record.status.value}: it has no report or model")


def finished_report(record: JobRecord, stored: bool) -> None:
    """Raise unless the job's report may be served: a succeeded job's (as its files), or a
    failed job's when the engine left one (``stored``: a target's frontier, no model)."""
    if record.status is JobStatus.FAILED and stored and record.files_expired_at is None:
        return
    finished_files(record)
