"""The prune task: the thin Celery adapter around the supervisor (worker/supervisor.py).

The task gets the job id only and never imports torch. It is idempotent by job id: only a
``queued`` job is claimed (core/jobs/lifecycle.py), so a duplicate delivery (Redis redelivery, a
janitor re-enqueue) of a job that runs elsewhere or has finished is a no-op. Acknowledgement
after the task (``acks_late``, ``reject_on_worker_lost``) is set once, app-wide, in
``core.queue.celery_config``.
"""

from __future__ import annotations

import os
from functools import lru_cache, partial
from typing import Any

from core.jobs.record import PRUNE_TASK
from core.queue import enqueue_job
from core.settings import get_settings
from core.storage.backends import open_job_store
from core.storage.protocols import JobStore
from worker.celery_app import app, supervisor


@lru_cache
def job_store() -> JobStore:
    return open_job_store(get_settings())


@app.task(name=PRUNE_TASK, bind=True)  # type: ignore[untyped-decorator]
def prune_job(self: Any, job_id: str) -> str:
    """Run one pruning job in a fresh process; returns what happened (for the worker log)."""
    worker = str(self.request.hostname or os.uname().nodename)
    enqueue = partial(enqueue_job, self.app, get_settings())
    return supervisor.supervise(job_store(), job_id, worker, enqueue).value
