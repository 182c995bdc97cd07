"""The job record: what the API shows and the worker updates. Plain pydantic."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

from core.jobs.error_codes import JobErrorCode
from core.jobs.formats import ModelFormat
from core.jobs.formats import UploadFormat as UploadFormat  # re-exported: records and tests name it
from core.jobs.report import Progress
from core.jobs.spec import JobSpec
from core.tenants.accounts import LOCAL_TENANT, Notify

# Celery task names: the API sends tasks by name, with the job id only.
PRUNE_TASK = "worker.tasks.prune_job"


def new_job_id() -> str:
    """A fresh job id (never client-supplied): 32 hex digits."""
    return uuid.uuid4().hex


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobError(BaseModel):
    code: JobErrorCode
    message: str


class JobRecord(BaseModel):
    id: str
    status: JobStatus
    spec: JobSpec
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    error: JobError | None = None
    attempts: int = 0
    cancel_requested: bool = False
    upload_format: UploadFormat
    upload_bytes: int
    upload_sha256: str
    model_format: ModelFormat | None = None  # primary format of the stored result
    model_sha256: str | None = None
    files_expired_at: datetime | None = None
    # Set while running: the worker renews the lease; an expired lease means it died.
    lease_expires_at: datetime | None = None
    worker: str | None = None  # hostname of the worker holding the lease
    tenant: str = LOCAL_TENANT  # whose job: every read path filters on it
    output_bytes: int = 0  # bytes of the stored results (the tenant's storage quota)
    # The webhook (the spec's notify, else the tenant's default at submission) and whether its
    # delivery was recorded (core/webhooks/deliveries.py).
    notify: Notify | None = None
    notified: bool = False
