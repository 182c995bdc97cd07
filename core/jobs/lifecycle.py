"""The job lifecycle: every status change a job goes through, each a fenced compare-and-set.

::

    queued --claim--> running --finish--> succeeded | failed | cancelled
       ^                 |
       +----requeue------+   (its process crashed, or its worker died: lease expired)
       +---hand_back-----+   (its worker is stopping: the attempt is given back)
    queued --cancel--> cancelled;  running --cancel--> running with cancel_requested

Who calls what: the API cancels (service/routes/jobs.py); the worker's task claims, renews
the lease while the job process lives and settles how that process ended
(worker/supervisor.py); the job process finishes its own job through its ``Claim``
(worker/job_process.py); the janitor re-queues jobs whose lease expired (worker/janitor.py).

Fencing: a claim is numbered by the attempt it started. Every later write by its holder first
checks that the record is still ``running`` under that attempt (``Claim.holds``), then moves
it by compare-and-set on the status, so a worker or job process whose job was re-queued and
claimed again writes nothing.

Plain Python over the ``JobStore`` protocol: no torch, no Celery, no HTTP. Putting a job on
the broker is the caller's ``enqueue`` step.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from core.jobs.error_codes import JobErrorCode
from core.jobs.record import JobError, JobRecord, JobStatus
from core.jobs.report import Progress
from core.settings import Settings
from core.storage.protocols import JobStore
from core.tenants.quotas import RunningLimits

log = logging.getLogger("core.jobs.lifecycle")

Enqueue = Callable[[str], None]  # puts a job id on the broker


def utcnow() -> datetime:
    """The one clock of job records: timezone-aware UTC."""
    return datetime.now(UTC)


class Outcome(StrEnum):
    """How one delivery of a job to a worker ended (what the worker logs)."""

    SKIPPED = "skipped"  # not claimed: a duplicate delivery, cancelled or out of attempts
    GONE = "gone"  # the record disappeared
    LOST = "lost"  # the claim was taken away (re-queued, maybe claimed again elsewhere)
    REQUEUED = "requeued"  # the job process crashed; back in the queue for another attempt
    HANDED_BACK = "handed_back"  # the worker is stopping; back in the queue, attempt returned
    SUCCEEDED = "succeeded"  # the job process recorded its terminal status itself
    FAILED = "failed"
    CANCELLED = "cancelled"
    CRASHED = "crashed"  # the job process died on its last attempt: failed ``crashed``
    TIMEOUT = "timeout"  # killed at the wall-clock limit: failed ``timeout``
    RESOURCE_LIMIT = "resource_limit"  # killed by a sandbox limit: failed ``resource_limit``


class Stop(StrEnum):
    """Why a job process stopped: it exited by itself, or the supervisor killed it."""

    EXITED = "exited"
    TIMED_OUT = "timed_out"  # past the wall-clock limit
    LOST = "lost"  # the lease could not be renewed: the job is no longer ours
    CANCELLED = "cancelled"  # a cancel request went unanswered for the grace period
    SHUTDOWN = "shutdown"  # the worker is stopping (SIGTERM/SIGINT): the job goes back


@dataclass(frozen=True)
class ProcessEnd:
    """How a job process ended, as its supervisor saw it."""

    returncode: int
    stop: Stop = Stop.EXITED
    oom_killed: bool = False  # the kernel's OOM killer counted a kill while it ran


class CancelResult(StrEnum):
    CANCELLED = "cancelled"  # it was queued: cancelled at once
    REQUESTED = "requested"  # it is running: it stops at its next batch
    FINISHED = "finished"  # it had already ended: nothing to cancel
    NOT_FOUND = "not_found"
    CONTESTED = "contested"  # its status kept changing under us


def lease_expiry(settings: Settings) -> datetime:
    return utcnow() + timedelta(seconds=settings.job_lease_s)


def lease_expired(record: JobRecord) -> bool:
    """A ``running`` job whose worker stopped renewing its lease (it died)."""
    if record.status is not JobStatus.RUNNING:
        return False
    expires = record.lease_expires_at or record.started_at or record.created_at
    return expires < utcnow()


# --- claim, renew, finish -----------------------------------------------------------------


class Claim:
    """A hold on a running job by attempt number; every write through it is fenced."""

    def __init__(self, store: JobStore, job_id: str, attempt: int) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt

    def holds(self, record: JobRecord | None) -> bool:
        return (
            record is not None
            and record.status is JobStatus.RUNNING
            and record.attempts == self.attempt
        )

    def renew(self, settings: Settings) -> JobRecord | None:
        """Extend the lease; None when the job is no longer ours (re-queued, finished)."""
        if not self.holds(self.store.get(self.job_id)):
            return None
        return self.store.transition(self.job_id, {JobStatus.RUNNING}, JobStatus.RUNNING,
                                     lease_expires_at=lease_expiry(settings))

    def finish(self, to: JobStatus, **fields: Any) -> bool:
        """running -> ``to`` when the claim still holds; False when it was lost."""
        if not self.holds(self.store.get(self.job_id)):
            return False
        done = self.store.transition(
            self.job_id, {JobStatus.RUNNING}, to, finished_at=utcnow(), lease_expires_at=None,
            **fields,
        )
        return done is not None


def claim(store: JobStore, job_id: str, settings: Settings, worker: str) -> Claim | None:
    """queued -> running with attempts + 1 and a fresh lease, or None when there is nothing
    to run: the job finished or runs elsewhere (a duplicate delivery), a cancel was requested
    while it waited (it becomes ``cancelled``), or its attempts are spent (``failed
    crashed``)."""
    record = store.get(job_id)
    if record is None or record.status is not JobStatus.QUEUED:
        return None
    if record.cancel_requested:
        store.transition(job_id, {JobStatus.QUEUED}, JobStatus.CANCELLED, finished_at=utcnow())
        return None
    attempt = record.attempts + 1
    if attempt > settings.max_attempts:
        error = JobError(
            code=JobErrorCode.CRASHED,
            message=f"the job process died on all {settings.max_attempts} attempts; "
            "not retrying (see the worker log)",
        )
        store.transition(job_id, {JobStatus.QUEUED}, JobStatus.FAILED, finished_at=utcnow(),
                         error=error)
        return None
    running = store.transition(
        job_id, {JobStatus.QUEUED}, JobStatus.RUNNING, attempts=attempt,
        started_at=record.started_at or utcnow(), worker=worker,
        lease_expires_at=lease_expiry(settings), progress=Progress(phase="loading"), error=None,
    )
    return None if running is None else Claim(store, job_id, attempt)


def claim_next(store: JobStore, settings: Settings, worker: str,
               running_limits: RunningLimits) -> Claim | None:
    """Claim the job that fair scheduling across tenants runs next (core/tenants/scheduling.py).

    A task's job id is a turn, not an order: every queued job has its own task, so every job
    gets a turn, but whose turn it is follows the rule, so that one tenant's burst cannot
    hold another's job back. None when nothing may start now (all done, or every tenant
    with queued jobs at its running limit: those wait for the janitor's re-enqueue)."""
    for _ in range(8):  # another worker may claim the same pick first: pick again
        chosen = store.next_queued(running_limits)
        if chosen is None:
            return None
        held = claim(store, chosen, settings, worker)
        if held is not None:
            return held
    return None  # contested every time: the janitor re-enqueues what is still queued


# --- cancel and requeue -------------------------------------------------------------------


def cancel(store: JobStore, job_id: str) -> tuple[CancelResult, JobRecord | None]:
    """Cancel a queued job at once, or ask a running one to stop; returns what happened and
    the record as it is now (None when there is no such job)."""
    record: JobRecord | None = None
    for _ in range(3):  # the status may change under us; each step is a compare-and-set
        record = store.get(job_id)
        if record is None:
            return CancelResult.NOT_FOUND, None
        if record.status is JobStatus.QUEUED:
            done = store.transition(job_id, {JobStatus.QUEUED}, JobStatus.CANCELLED,
                                    finished_at=utcnow())
            if done is not None:
                return CancelResult.CANCELLED, done
        elif record.status is JobStatus.RUNNING:
            asked = store.transition(job_id, {JobStatus.RUNNING}, JobStatus.RUNNING,
                                     cancel_requested=True)
            if asked is not None:
                return CancelResult.REQUESTED, asked
        else:
            return CancelResult.FINISHED, record
    return CancelResult.CONTESTED, record


def requeue(store: JobStore, job_id: str, enqueue: Enqueue,
            only_if: Callable[[JobRecord], bool] = lambda record: True,
            **fields: Any) -> bool:
    """running -> queued (lease, worker and progress reset), then ``enqueue(job_id)``.

    False when the job is not running or ``only_if`` refuses the freshly read record. The
    attempt counter is left as it is: the next claim counts the attempt. When ``enqueue``
    raises, the job stays queued and the exception propagates: the janitor re-enqueues queued
    jobs the broker does not hold."""
    current = store.get(job_id)
    if current is None or current.status is not JobStatus.RUNNING or not only_if(current):
        return False
    back = store.transition(job_id, {JobStatus.RUNNING}, JobStatus.QUEUED,
                            lease_expires_at=None, worker=None, progress=Progress(phase="queued"),
                            **fields)
    if back is None:
        return False
    enqueue(job_id)
    return True


# --- settle: after the job process ended --------------------------------------------------


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode} without recording an outcome"


def settle(held: Claim, end: ProcessEnd, code: JobErrorCode, settings: Settings,
           enqueue: Enqueue) -> Outcome:
    """After the job process ended: keep the outcome it recorded, or record one for it.

    ``code`` is how the sandbox classifies an exit without an outcome (``crashed``,
    ``timeout``, ``resource_limit``); a crash with attempts left is re-queued, anything else
    fails the job with ``code``."""
    current = held.store.get(held.job_id)
    if current is None:
        return Outcome.GONE
    if current.status.terminal:
        return Outcome(current.status.value)
    if end.stop is Stop.LOST or not held.holds(current):
        return Outcome.LOST
    if end.stop is Stop.CANCELLED:
        held.finish(JobStatus.CANCELLED)
        return Outcome.CANCELLED
    if end.stop is Stop.SHUTDOWN:
        return hand_back(held, enqueue)
    if code is JobErrorCode.CRASHED and held.attempt < settings.max_attempts:
        return _requeue_crashed(held, describe_exit(end.returncode), enqueue)
    if code is JobErrorCode.TIMEOUT:
        message = timeout_message(current, settings)
    elif code is JobErrorCode.CRASHED:
        message = (f"the job process {describe_exit(end.returncode)} on all "
                   f"{held.attempt} attempts; not retrying")
    else:
        message = f"the job process hit its resource limits ({describe_exit(end.returncode)})"
    held.finish(JobStatus.FAILED, error=JobError(code=code, message=message))
    return Outcome(code.value)


def wall_clock_limit_s(record: JobRecord, settings: Settings) -> int:
    """The job's wall-clock limit: the spec's ``limits.timeout_s``, capped by the server's."""
    return record.spec.limits.wall_clock_s(settings.job_soft_time_limit_s)


def timeout_message(record: JobRecord, settings: Settings) -> str:
    limit = wall_clock_limit_s(record, settings)
    source = ("the spec's limits.timeout_s" if limit < settings.job_soft_time_limit_s
              else "the server's job_soft_time_limit_s")
    return f"the job ran past its wall-clock limit of {limit} s ({source})"


def hand_back(held: Claim, enqueue: Enqueue) -> Outcome:
    """The worker is stopping (SIGTERM, Ctrl-C, docker stop): running -> queued with the
    attempt this claim took given back, since a clean shutdown is not the job's fault, then
    re-enqueued so that the next worker runs it from the start."""
    log.warning("job %s attempt %d: the worker is stopping; handing the job back", held.job_id,
                held.attempt)
    try:
        requeue(held.store, held.job_id, enqueue, only_if=held.holds, attempts=held.attempt - 1)
    except Exception:  # Redis down: the janitor re-enqueues queued jobs the broker lacks
        log.exception("could not re-enqueue job %s", held.job_id)
    return Outcome.HANDED_BACK


def _requeue_crashed(held: Claim, why: str, enqueue: Enqueue) -> Outcome:
    log.warning("job %s attempt %d: job process %s; re-queueing", held.job_id, held.attempt, why)
    try:
        requeue(held.store, held.job_id, enqueue, only_if=held.holds)
    except Exception:  # Redis down: the janitor re-enqueues queued jobs the broker lacks
        log.exception("could not re-enqueue job %s", held.job_id)
    return Outcome.REQUEUED
