"""The Celery app the worker runs: ``celery -A worker.celery_app:app worker --pool solo``.

The worker's main process never imports torch: the task supervises a fresh job process
(``worker/job_process.py``) that does. One worker process per GPU, one job at a time (solo
pool, prefetch 1); ``settings.worker_device`` picks the device.

Besides the task, the worker's main process runs the janitor thread (worker/janitor.py): the
Redis heartbeat /readyz looks for, the reconciler and the retention sweep.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown

from core.queue import make_celery
from core.settings import get_settings

app = make_celery(get_settings(), name="pruning-worker")
app.conf.imports = ("worker.tasks",)
app.conf.include = ["worker.tasks"]


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_janitor(sender: Any = None, **_: Any) -> None:
    from worker.janitor import start_janitor
    from worker.tasks import prepare_standby

    hostname = getattr(sender, "hostname", None) or "worker"
    start_janitor(get_settings(), app, hostname)
    prepare_standby(get_settings())  # the first job's process warms up before it arrives


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_janitor(**_: Any) -> None:
    from worker.janitor import stop_janitor

    stop_janitor()
