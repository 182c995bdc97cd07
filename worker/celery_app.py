"""The Celery app the worker runs: ``celery -A worker.celery_app:app worker --pool solo``.

The worker's main process never imports torch: the task (worker/tasks.py) hands each job to
the ``Supervisor`` (worker/supervisor.py), which runs it in a fresh job process
(worker/job_process.py). One worker process per GPU, one job at a time (solo pool, prefetch
1); ``settings.worker_device`` picks the device.

Besides the task, the worker's main process runs the janitor thread (worker/janitor.py): the
Redis heartbeat /readyz looks for, the reconciler and the retention sweep; and the webhook
dispatcher thread (worker/notify/dispatcher.py). The log level is
``settings.log_level`` whatever ``--loglevel`` says.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    after_setup_logger,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from core.queue import celery_config
from core.settings import get_settings
from worker.supervisor import Supervisor

app = Celery("pruning-worker", config_source=celery_config(get_settings()))
app.conf.imports = ("worker.tasks",)  # the task registers when the worker starts
app.conf.include = ["worker.tasks"]
# This worker process's job processes: the running one and the standby.
supervisor = Supervisor(get_settings(), time_up=(SoftTimeLimitExceeded,))


@after_setup_logger.connect  # type: ignore[untyped-decorator]
def _log_level(logger: logging.Logger, **_: Any) -> None:
    logger.setLevel(get_settings().log_level)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_janitor(sender: Any = None, **_: Any) -> None:
    from core.storage.backends import open_job_store
    from worker.janitor import start_janitor
    from worker.notify.dispatcher import start_dispatcher

    hostname = getattr(sender, "hostname", None) or "worker"
    start_janitor(get_settings(), app, hostname)
    start_dispatcher(get_settings(), open_job_store(get_settings()))
    supervisor.prepare_standby()  # the first job's process warms up before it arrives


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _hand_back_the_running_job(**_: Any) -> None:
    """SIGTERM or SIGINT (docker stop, Ctrl-C, ``python -m stack`` stopping): Celery's warm
    shutdown would wait for the running job to end; the supervisor hands it back to the queue
    instead, at once, without using up an attempt. Runs in the signal handler: sets a flag."""
    supervisor.request_stop()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_janitor(**_: Any) -> None:
    from worker.janitor import stop_janitor
    from worker.notify.dispatcher import stop_dispatcher

    stop_janitor()
    stop_dispatcher()
    supervisor.close()  # the standby (it would die with this process anyway)
