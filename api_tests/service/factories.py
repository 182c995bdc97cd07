"""Jobs as a worker leaves them, written straight into the store and blob store."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from api_tests.core.factories import make_record
from api_tests.support.api import Api
from core.jobs.record import JobStatus
from core.storage.protocols import REPORT, model_file

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REPORT_BODY = {"report_version": 1, "note": "stored as written by the worker"}
MODEL_BYTES = b"PK\x03\x04 pretend torchscript archive" * 100


def finished_job(api: Api, job_id: str = "a" * 32, **fields: Any) -> str:
    """A succeeded job with its report and a TorchScript model, as a worker leaves it."""
    sha = hashlib.sha256(MODEL_BYTES).hexdigest()
    values = {"status": JobStatus.SUCCEEDED, "started_at": NOW, "finished_at": NOW,
              "model_format": "torchscript", "model_sha256": sha, **fields}
    api.store.create(make_record(NOW, job_id=job_id, **values))
    with api.blobs.writer(job_id, REPORT) as f:
        f.write(json.dumps(REPORT_BODY).encode())
    with api.blobs.writer(job_id, model_file("torchscript")) as f:
        f.write(MODEL_BYTES)
    return job_id
