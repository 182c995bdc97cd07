"""Plain factories for job records (shared by the core and service tests)."""

from __future__ import annotations

from datetime import UTC, datetime

from core.jobs.record import JobRecord, JobStatus, UploadFormat, new_job_id
from core.jobs.spec import REFERENCE_RECIPE

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_record(
    created_at: datetime = T0, job_id: str | None = None, **fields: object
) -> JobRecord:
    base: dict[str, object] = {
        "id": job_id or new_job_id(),
        "status": JobStatus.QUEUED,
        "spec": REFERENCE_RECIPE,
        "created_at": created_at,
        "upload_format": UploadFormat.ZIP,
        "upload_bytes": 10,
        "upload_sha256": "0" * 64,
    }
    return JobRecord.model_validate({**base, **fields})
