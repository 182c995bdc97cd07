"""Celery configuration shared by the API (which only sends tasks by name) and the workers.

No torch here, and no task code: the API builds its Celery handle from this module alone.
(Owner: the worker/ops work; the API only calls ``make_celery``.)
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        # Redis redelivers an unacknowledged task after the visibility timeout: it must
        # outlast the longest job, or a running job gets a twin.
        "broker_transport_options": {"visibility_timeout": settings.broker_visibility_timeout_s},
        "task_default_queue": settings.queue_name,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # outcomes live in the job record, not a result backend
        # Acknowledge after the task ran, and re-queue when the process running it is lost.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.job_soft_time_limit_s,
        "task_time_limit": settings.job_hard_time_limit_s,
    }


def make_celery(settings: Settings, name: str = "pruning") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app
