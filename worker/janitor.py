"""The janitor: a thread in each worker's main process, every ``janitor_interval_s``.

- **Heartbeat**: ``HEARTBEAT_PREFIX + hostname`` in Redis with a TTL; /readyz reads it.
- **Reconcile** the job records with the broker:
  - a ``running`` job whose lease expired lost its worker: back to ``queued`` and re-enqueued
    (the next claim counts the attempt, and fails the job ``crashed`` once they are spent);
  - a ``queued`` job the broker does not hold (Redis restarted without its data, or the
    enqueue failed) is re-enqueued. When Redis lost everything (our marker key is gone), every
    queued job is re-enqueued without looking.
  Duplicates are harmless: the task claims only ``queued`` jobs, by compare-and-set.
- **Retention**: files of jobs finished more than ``retention_s`` ago are deleted and the
  record gets ``files_expired_at`` (the API then answers 410); the record stays.
- **Local copies**: this host's copies of a job (``data_dir/scratch/<id>``, the job
  process's folder with its outputs, and a remote store's ``data_dir/blob-cache/<id>``) are
  removed once the job does not run here, i.e. is not ``running`` under a worker that uses
  this data dir (each janitor registers its worker in ``data_dir/workers/``). A worker or job
  process killed with SIGKILL leaves them behind; the janitor's first pass on start and every
  pass after clear them. A copy touched within the last ``janitor_interval_s`` (one just
  made, whose record we may have read a moment early) waits for the next pass, and one of a
  job with no record yet (an upload an API on the same data dir is still receiving or
  checking) waits ``upload_max_s``.
- **Dataset cache**: on remote stores, ``data_dir/dataset-cache/<sha256>`` (one copy per
  dataset file, ``worker/dataset_files.py``) is removed when no queued job and no job running
  here names a dataset with that sha256, and either no dataset holds the sha256 any more or
  the copy was not used for ``dataset_cache_max_age_s``. A copy touched within the last
  ``janitor_interval_s`` waits a pass; a download's ``.tmp-*`` file waits the max age.

Several workers may each run a janitor; every step is idempotent.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import redis
from celery import Celery

from core.datasets.store import DatasetStore
from core.jobs.lifecycle import lease_expired, requeue, utcnow
from core.jobs.record import JobRecord, JobStatus
from core.queue import BROKER_MARKER_KEY, enqueue_job, heartbeat_key
from core.settings import Settings
from core.storage.backends import open_blob_store, open_job_store
from core.storage.protocols import BlobStore, JobStore
from worker.dataset_files import CACHE_DIR as DATASET_CACHE

log = logging.getLogger("worker.janitor")

UNACKED_KEY = "unacked"  # kombu's hash of delivered, unacknowledged messages
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Janitor:
    def __init__(self, settings: Settings, app: Celery, hostname: str,
                 store: JobStore | None = None, blobs: BlobStore | None = None) -> None:
        self.settings = settings
        self.app = app
        self.hostname = hostname
        self.store = store or open_job_store(settings)
        self.blobs = blobs or open_blob_store(settings)
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                          socket_connect_timeout=2)

    def run_once(self) -> None:
        """One pass; each step survives the others failing (e.g. Redis down)."""
        for step in (self.heartbeat, self.reconcile, self.sweep, self.sweep_local_copies,
                     self.sweep_dataset_cache):
            try:
                step()
            except redis.RedisError as exc:
                log.warning("janitor %s: Redis unavailable (%s)", step.__name__, exc)
            except Exception:
                log.exception("janitor %s failed", step.__name__)

    def heartbeat(self) -> None:
        self._register()
        self.redis.set(heartbeat_key(self.hostname), utcnow().isoformat(),
                       ex=self.settings.worker_heartbeat_ttl_s)

    # --- reconcile ----------------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Re-enqueue jobs the broker lost; returns their ids."""
        broker_lost = not self.redis.exists(BROKER_MARKER_KEY)
        unfinished = list(self.store.unfinished())
        requeued = [r.id for r in unfinished if lease_expired(r) and self._requeue(r)]
        grace = timedelta(seconds=max(2 * self.settings.janitor_interval_s, 5.0))
        waiting = [r for r in unfinished
                   if r.status is JobStatus.QUEUED and utcnow() - r.created_at > grace]
        if waiting and not broker_lost:
            held = self._broker_messages(waiting)
            waiting = [r for r in waiting if r.id not in held]
        for record in waiting:
            if self._still_queued(record.id):
                enqueue_job(self.app, self.settings, record.id)
                requeued.append(record.id)
        self.redis.set(BROKER_MARKER_KEY, utcnow().isoformat())
        if requeued:
            log.warning("janitor: re-enqueued %d job(s): %s", len(requeued), requeued)
        return requeued

    def _requeue(self, record: JobRecord) -> bool:
        """running -> queued for a job whose worker died (its lease expired on a fresh read)."""
        return requeue(self.store, record.id, self._enqueue, only_if=lease_expired)

    def _enqueue(self, job_id: str) -> None:
        enqueue_job(self.app, self.settings, job_id)

    def _still_queued(self, job_id: str) -> bool:
        current = self.store.get(job_id)
        return current is not None and current.status is JobStatus.QUEUED

    def _broker_messages(self, candidates: list[JobRecord]) -> set[str]:
        """Job ids of the prune messages Redis holds, waiting or delivered-unacknowledged.
        A message names its job id in the ``argsrepr`` header, in plain JSON."""
        raw = [_bytes(m) for m in self.redis.lrange(self.settings.queue_name, 0, -1)]
        raw += [_bytes(m) for m in self.redis.hvals(UNACKED_KEY)]
        return set(_job_ids(raw, candidates))

    # --- retention ----------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Delete the files of jobs finished more than retention_s ago; returns their ids."""
        cutoff = utcnow() - timedelta(seconds=self.settings.retention_s)
        expired = []
        for record in self.store.finished_before(cutoff):
            self.blobs.delete_job_files(record.id)
            self.store.update(record.id, files_expired_at=utcnow())
            expired.append(record.id)
        if expired:
            log.info("janitor: files of %d job(s) expired", len(expired))
        return expired


    # --- local copies -------------------------------------------------------------------

    def sweep_local_copies(self) -> list[str]:
        """Remove this host's copies of jobs that do not run here; returns their ids."""
        scratch = self.settings.data_dir / "scratch"
        here = self._workers_here()
        cached = self.blobs.local_copies()
        ids = {p.name for p in _folders(scratch)} | set(cached)
        removed = []
        for job_id in sorted(ids):
            record = self.store.get(job_id)
            if record is not None and record.status is JobStatus.RUNNING and record.worker in here:
                continue
            grace = self.settings.janitor_interval_s if record else self.settings.upload_max_s
            folders = [scratch / job_id, *([cached[job_id]] if job_id in cached else [])]
            if any(_touched_within(folder, grace) for folder in folders):
                continue
            shutil.rmtree(scratch / job_id, ignore_errors=True)
            self.blobs.drop_local_copies(job_id)
            removed.append(job_id)
        if removed:
            log.info("janitor: removed local copies of %d job(s): %s", len(removed), removed)
        return removed

    def sweep_dataset_cache(self) -> list[str]:
        """Remove cached dataset copies nothing here needs (see the module's docstring);
        returns their file names."""
        folder = self.settings.data_dir / DATASET_CACHE
        if not folder.is_dir():
            return []
        needed = self._datasets_needed_here()
        held = DatasetStore(self.store.sql()).digests()
        removed = []
        for path in sorted(folder.iterdir()):
            if path.name in needed or not path.is_file():
                continue
            stored = path.name in held or path.name.startswith(".tmp-")
            wait = self.settings.dataset_cache_max_age_s if stored \
                else self.settings.janitor_interval_s
            if not _touched_within(path, wait):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        if removed:
            log.info("janitor: removed %d cached dataset file(s)", len(removed))
        return removed

    def _datasets_needed_here(self) -> set[str]:
        """The sha256 of the datasets of queued jobs and of jobs running on this data dir."""
        here = self._workers_here()
        datasets = DatasetStore(self.store.sql())
        needed = set()
        for job in self.store.unfinished():
            if not job.spec.data.uploaded:
                continue
            if job.status is JobStatus.RUNNING and job.worker not in here:
                continue
            record = datasets.get(job.spec.data.dataset, job.tenant)
            if record is not None:
                needed.add(record.sha256)
        return needed

    def _register(self) -> None:
        """Say that this worker uses this data dir (its jobs' copies here are its own)."""
        folder = self.settings.data_dir / "workers"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.hostname.replace("/", "_")).touch()

    def _workers_here(self) -> set[str]:
        self._register()
        return {p.name for p in (self.settings.data_dir / "workers").iterdir()} | {self.hostname}


def _folders(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and JOB_ID.fullmatch(p.name)] \
        if root.is_dir() else []


def _touched_within(folder: Path, seconds: float) -> bool:
    """Whether anything in ``folder`` (itself included) changed in the last ``seconds``."""
    if not folder.exists():
        return False
    cutoff = time.time() - seconds
    try:
        return any(p.lstat().st_mtime > cutoff for p in (folder, *folder.rglob("*")))
    except OSError:  # removed while we looked
        return False


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _job_ids(messages: list[bytes], candidates: Iterable[JobRecord]) -> Iterable[str]:
    text = b"\n".join(messages)
    return (r.id for r in candidates if r.id.encode() in text)


# --- the thread -----------------------------------------------------------------------------

_stop = threading.Event()
_thread: threading.Thread | None = None


def start_janitor(settings: Settings, app: Celery, hostname: str) -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    janitor = Janitor(settings, app, hostname)
    _stop.clear()

    def loop() -> None:
        while not _stop.is_set():
            janitor.run_once()
            _stop.wait(settings.janitor_interval_s)

    _thread = threading.Thread(target=loop, name="janitor", daemon=True)
    _thread.start()


def stop_janitor() -> None:
    _stop.set()
