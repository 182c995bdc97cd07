"""The broker contract shared by the API (which only sends tasks by name) and the workers:
the Celery configuration as plain data, the task message, and the Redis keys beside it.

Neither Celery nor torch is imported here: the API and the worker each build their Celery
handle from ``celery_config`` (service/deps.py, worker/celery_app.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from core.jobs.record import PRUNE_TASK
from core.settings import Settings

# Each worker sets ``HEARTBEAT_PREFIX + hostname`` in Redis with a TTL of
# ``settings.worker_heartbeat_ttl_s``; /readyz is ready when at least one such key exists.
HEARTBEAT_PREFIX = "pruner:worker:heartbeat:"
# Set once in Redis by the janitor; when it is missing, Redis restarted without its data (no
# AOF), and every queued job is re-enqueued.
BROKER_MARKER_KEY = "pruner:broker:marker"


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
        # A running job does not need the broker; a Redis restart must not cancel it (its
        # message is redelivered later and is then a no-op, see core/lifecycle.claim).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_max_retries": None,
        # The API answers 503 quickly when Redis is down instead of retrying for long.
        "task_publish_retry_policy": {
            "max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5
        },
    }


def heartbeat_key(hostname: str) -> str:
    return HEARTBEAT_PREFIX + hostname


class TaskSender(Protocol):
    """What sending a task needs from a Celery app."""

    def send_task(self, name: str, args: Any = None, **options: Any) -> Any: ...


def enqueue_job(app: TaskSender, settings: Settings, job_id: str) -> None:
    """Send the prune task for ``job_id`` by name: the id travels, the model bytes never do."""
    app.send_task(PRUNE_TASK, args=[job_id], queue=settings.queue_name)

