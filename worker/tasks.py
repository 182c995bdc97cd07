"""The prune task: claim the job, supervise a fresh job process, record how it ended.

The task gets the job id only and never imports torch. It is idempotent by job id: only a
``queued`` job is claimed, by a compare-and-set queued -> running that also bumps the attempt
counter, so a duplicate delivery (Redis redelivery, a reconciler re-enqueue) of a job that is
running elsewhere or finished is a no-op. A running job holds a lease that this task renews
while its job process lives; when the worker dies, the lease expires and the janitor
(worker/janitor.py) puts the job back in the queue. The job process dies with its worker
(PR_SET_PDEATHSIG), so a re-queued job never has a live twin.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from core.errors import JobErrorCode
from core.jobs import PRUNE_TASK, JobError, JobRecord, JobStatus
from core.queue import enqueue_job
from core.report import Progress
from core.settings import Settings, get_settings
from core.store import JobStore
from core.store_sqlite import SqliteJobStore
from worker import sandbox
from worker.celery_app import app

log = logging.getLogger("worker.tasks")

Popen = subprocess.Popen[bytes]

POLL_S = 0.25  # how often the supervisor looks at its job process
CANCEL_GRACE_S = 10.0  # a cancelled job process that has not stopped by then is killed
PR_SET_PDEATHSIG = 1


def now() -> datetime:
    return datetime.now(UTC)


@lru_cache
def job_store() -> JobStore:
    return SqliteJobStore.from_settings(get_settings())


@app.task(  # type: ignore[untyped-decorator]
    name=PRUNE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True
)
def prune_job(self: object, job_id: str) -> str:
    """Run one pruning job in a fresh process; returns what happened (for the worker log)."""
    return supervise(job_id, get_settings(), job_store(), getattr(self, "request", None))


def supervise(job_id: str, settings: Settings, store: JobStore, request: object = None) -> str:
    hostname = str(getattr(request, "hostname", None) or os.uname().nodename)
    record = claim(store, job_id, settings, hostname)
    if record is None:
        return "skipped"
    outcome = run_job_process(store, record, settings)
    return record_outcome(store, record, outcome, settings)


def claim(store: JobStore, job_id: str, settings: Settings, hostname: str) -> JobRecord | None:
    """queued -> running with attempts + 1, or None when there is nothing to run."""
    record = store.get(job_id)
    if record is None or record.status is not JobStatus.QUEUED:
        # Finished, or running under a live lease elsewhere: a duplicate delivery.
        return None
    if record.cancel_requested:
        store.transition(job_id, {JobStatus.QUEUED}, JobStatus.CANCELLED, finished_at=now())
        return None
    attempt = record.attempts + 1
    if attempt > settings.max_attempts:
        error = JobError(
            code=JobErrorCode.CRASHED,
            message=f"the job process died on all {settings.max_attempts} attempts; "
            "not retrying (see the worker log)",
        )
        store.transition(job_id, {JobStatus.QUEUED}, JobStatus.FAILED, finished_at=now(),
                         error=error)
        return None
    return store.transition(
        job_id, {JobStatus.QUEUED}, JobStatus.RUNNING, attempts=attempt,
        started_at=record.started_at or now(), worker=hostname,
        lease_expires_at=now() + timedelta(seconds=settings.job_lease_s),
        progress=Progress(phase="loading"), error=None,
    )


@dataclass
class Outcome:
    returncode: int
    timed_out: bool = False
    oom_killed: bool = False  # the kernel's OOM killer counted a kill while it ran
    lost: bool = False  # the claim was taken away while the process ran
    cancelled: bool = False  # killed by us after a cancel request went unanswered


def child_env(settings: Settings) -> dict[str, str]:
    """The worker's environment with the paths made absolute: the child's cwd is scratch."""
    env = dict(os.environ)
    env["PRUNER_DATA_DIR"] = str(settings.data_dir.resolve())
    env["PRUNER_MNIST_ROOT"] = str(settings.mnist_root.resolve())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def child_preexec(settings: Settings) -> Callable[[], None]:
    """The sandbox's limits, plus: a session of its own (a Ctrl-C meant for the worker does
    not hit the job), and death with the worker (no orphan keeps running a re-queued job)."""
    limits = sandbox.preexec_limits(settings)
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def apply() -> None:
        limits()
        os.setsid()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the worker died before prctl took effect
            os._exit(1)

    return apply


def spawn_job_process(settings: Settings, args: list[str], cwd: Path) -> Popen:
    return subprocess.Popen([sys.executable, "-m", "worker.job_process", *args], cwd=cwd,
                            env=child_env(settings), preexec_fn=child_preexec(settings),
                            stdin=subprocess.PIPE)


# The next job's process, started ahead while this worker is idle (see worker/job_process.py).
# Only the worker's main thread touches it: PR_SET_PDEATHSIG follows the thread that forked.
_standby: Popen | None = None


def prepare_standby(settings: Settings) -> None:
    """Start a standby job process unless a live one is waiting."""
    global _standby
    if _standby is not None and _standby.poll() is None:
        return
    base = settings.data_dir.resolve() / "scratch"
    base.mkdir(parents=True, exist_ok=True)
    _standby = spawn_job_process(settings, ["--standby"], base)


def start_job_process(record: JobRecord, settings: Settings, scratch: Path) -> Popen:
    """Hand the job to the waiting standby, or start a process for it when there is none."""
    global _standby
    proc, _standby = _standby, None
    if proc is not None and proc.poll() is None and proc.stdin is not None:
        try:
            proc.stdin.write(f"{record.id} {record.attempts} {scratch}\n".encode())
            proc.stdin.close()
            return proc
        except OSError:  # it died meanwhile
            kill(proc)
    return spawn_job_process(settings, [record.id, str(record.attempts)], scratch)


def run_job_process(store: JobStore, record: JobRecord, settings: Settings) -> Outcome:
    scratch = sandbox.scratch_dir(settings.data_dir.resolve(), record.id, settings)
    ooms_before = sandbox.oom_kills()
    proc = start_job_process(record, settings, scratch)
    log.info("job %s attempt %d: job process %d", record.id, record.attempts, proc.pid)
    try:
        outcome = watch(proc, store, record, settings)
    except SoftTimeLimitExceeded:
        kill(proc)
        outcome = Outcome(proc.returncode, timed_out=True)
    finally:
        kill(proc)
        shutil.rmtree(scratch, ignore_errors=True)
        prepare_standby(settings)  # the next job's process warms up while this one is filed
    ooms_after = sandbox.oom_kills()
    outcome.oom_killed = None not in (ooms_before, ooms_after) and ooms_after != ooms_before
    return outcome


def watch(proc: Popen, store: JobStore, record: JobRecord,
          settings: Settings) -> Outcome:
    """Wait for the job process, renewing the lease; kill it past the wall-clock limit, when
    the lease is lost, or when it ignores a cancel request."""
    start = time.monotonic()
    renew_every = settings.job_lease_s / 3
    next_renew = start + renew_every
    cancel_seen: float | None = None
    while True:
        try:
            return Outcome(proc.wait(timeout=POLL_S))
        except subprocess.TimeoutExpired:
            pass
        clock = time.monotonic()
        if clock - start >= settings.job_soft_time_limit_s:
            kill(proc)
            return Outcome(proc.returncode, timed_out=True)
        if clock >= next_renew:
            next_renew = clock + renew_every
            current = renew_lease(store, record, settings)
            if current is None:
                kill(proc)
                return Outcome(proc.returncode, lost=True)
            if current.cancel_requested and cancel_seen is None:
                cancel_seen = clock
        if cancel_seen is not None and clock - cancel_seen >= CANCEL_GRACE_S:
            kill(proc)
            return Outcome(proc.returncode, cancelled=True)


def renew_lease(store: JobStore, record: JobRecord, settings: Settings) -> JobRecord | None:
    """Extend the lease; None when the job is no longer ours (re-queued, finished)."""
    current = store.get(record.id)
    if current is None or current.status is not JobStatus.RUNNING:
        return None
    if current.attempts != record.attempts:
        return None
    return store.transition(record.id, {JobStatus.RUNNING}, JobStatus.RUNNING,
                            lease_expires_at=now() + timedelta(seconds=settings.job_lease_s))


def kill(proc: Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode} without recording an outcome"


def record_outcome(store: JobStore, record: JobRecord, outcome: Outcome,
                   settings: Settings) -> str:
    """After the job process ended: keep what it wrote, or fail / re-queue the job."""
    current = store.get(record.id)
    if current is None or current.status.terminal:
        return current.status.value if current else "gone"
    if outcome.lost or current.status is not JobStatus.RUNNING:
        return "lost"
    if current.attempts != record.attempts:
        return "lost"
    if outcome.cancelled:
        store.transition(record.id, {JobStatus.RUNNING}, JobStatus.CANCELLED,
                         finished_at=now(), lease_expires_at=None)
        return "cancelled"
    code = sandbox.classify_exit(outcome.returncode, outcome.timed_out, outcome.oom_killed)
    if code is JobErrorCode.CRASHED and record.attempts < settings.max_attempts:
        return requeue(store, record, settings, describe_exit(outcome.returncode))
    if code is JobErrorCode.TIMEOUT:
        message = f"the job ran past its wall-clock limit of {settings.job_soft_time_limit_s} s"
    elif code is JobErrorCode.CRASHED:
        message = (f"the job process {describe_exit(outcome.returncode)} on all "
                   f"{record.attempts} attempts; not retrying")
    else:
        message = f"the job process hit its resource limits ({describe_exit(outcome.returncode)})"
    store.transition(record.id, {JobStatus.RUNNING}, JobStatus.FAILED, finished_at=now(),
                     lease_expires_at=None, error=JobError(code=code, message=message))
    return code.value


def requeue(store: JobStore, record: JobRecord, settings: Settings, why: str) -> str:
    log.warning("job %s attempt %d: job process %s; re-queueing", record.id, record.attempts, why)
    back = store.transition(record.id, {JobStatus.RUNNING}, JobStatus.QUEUED,
                            lease_expires_at=None, worker=None, progress=Progress(phase="queued"))
    if back is not None:
        try:
            enqueue_job(app, settings, record.id)
        except Exception:  # Redis down: the janitor re-enqueues queued jobs the broker lacks
            log.exception("could not re-enqueue job %s", record.id)
    return "requeued"
