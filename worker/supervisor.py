"""Supervise job processes: one ``Supervisor`` per worker process runs each claimed job in a
fresh ``python -m worker.job_process`` and keeps the next one warming up as a standby.

A delivery goes: claim the job (core/jobs/lifecycle.py), start its job process (the waiting
standby, or a fresh one), watch it (renew the lease every third of it; kill it past the
job's wall-clock limit, when the lease is lost, when it ignores a cancel request, or when the
worker is stopping), then settle how it ended (core/jobs/lifecycle.py) and start the next standby.

The job process runs inside the sandbox limits (worker/sandbox.py), in a session of its own,
and dies with its worker (PR_SET_PDEATHSIG), so a re-queued job never has a live twin. Only
the worker's main thread may start one: PR_SET_PDEATHSIG follows the thread that forked.

A short outage of the job store (a PostgreSQL restart) neither fails the delivery nor kills
the job process: the claim and the settling are retried for up to the job's lease
(``core/storage/outages.py``), and a lease renewal that meets the outage is tried again a
second later (the lease has two thirds of its length left when the first renewal fails).

No torch and no Celery here: the Celery task (worker/tasks.py) is a thin adapter, and Celery's
soft time limit reaches ``run`` as one of the ``time_up`` exceptions.
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
from pathlib import Path

from core.jobs.lifecycle import (
    Claim,
    Enqueue,
    Outcome,
    ProcessEnd,
    Stop,
    claim_next,
    settle,
    wall_clock_limit_s,
)
from core.settings import Settings
from core.storage.outages import patiently
from core.storage.protocols import JobStore, StoreUnavailable
from core.tenants.tenancy import running_limits
from worker import sandbox

log = logging.getLogger("worker.supervisor")

Popen = subprocess.Popen[bytes]

POLL_S = 0.25  # how often the supervisor looks at its job process
CANCEL_GRACE_S = 10.0  # a cancelled job process that has not stopped by then is killed
RENEW_RETRY_S = 1.0  # a renewal that met a store outage is tried again this much later
PR_SET_PDEATHSIG = 1


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


def kill(proc: Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class Supervisor:
    """Runs one job at a time in a fresh job process and owns the standby process."""

    def __init__(self, settings: Settings,
                 time_up: tuple[type[BaseException], ...] = ()) -> None:
        self.settings = settings
        self.time_up = time_up  # exceptions that mean "the wall-clock limit is reached"
        self._standby: Popen | None = None  # the next job's process, warming up
        self.stopping = False  # set by request_stop(): hand the running job back

    def request_stop(self) -> None:
        """The worker is shutting down: the running job's process is killed within
        ``POLL_S`` and the job handed back to the queue. Only sets a flag, so that a signal
        handler may call it."""
        self.stopping = True

    # --- one delivery ---------------------------------------------------------------------

    def supervise(self, store: JobStore, job_id: str, worker: str, enqueue: Enqueue) -> Outcome:
        """Claim the job, run it, settle how it ended; SKIPPED when there was nothing to run."""
        settings = self.settings
        held = patiently(
            lambda: claim_next(store, settings, worker, running_limits(settings, store)),
            within_s=settings.job_lease_s, what=f"delivery of job {job_id}: claiming")
        if held is None:
            return Outcome.SKIPPED
        end = self.run(held)
        code = sandbox.classify_exit(end.returncode, end.stop is Stop.TIMED_OUT, end.oom_killed)
        return patiently(lambda: settle(held, end, code, settings, enqueue),
                         within_s=settings.job_lease_s,
                         what=f"job {held.job_id} attempt {held.attempt}: settling")

    def run(self, held: Claim) -> ProcessEnd:
        """Run the claimed job in a job process until it ends; the scratch dir goes with it."""
        settings = self.settings
        scratch = sandbox.scratch_dir(settings.data_dir.resolve(), held.job_id, settings)
        ooms_before = sandbox.oom_kills()
        proc = self.start(held, scratch)
        log.info("job %s attempt %d: job process %d", held.job_id, held.attempt, proc.pid)
        try:
            returncode, stop = self.watch(proc, held)
        except self.time_up:
            kill(proc)
            returncode, stop = proc.returncode, Stop.TIMED_OUT
        finally:
            kill(proc)
            shutil.rmtree(scratch, ignore_errors=True)
            if not self.stopping:  # the next job's process warms up while this one is filed
                self.prepare_standby()
        ooms_after = sandbox.oom_kills()
        oom_killed = None not in (ooms_before, ooms_after) and ooms_after != ooms_before
        return ProcessEnd(returncode, stop, oom_killed)

    def watch(self, proc: Popen, held: Claim) -> tuple[int, Stop]:
        """Wait for the job process, renewing the lease; kill it past the job's wall-clock
        limit, when the lease is lost, when it ignores a cancel request, or when the worker
        is stopping."""
        settings = self.settings
        record = patiently(lambda: held.store.get(held.job_id), within_s=settings.job_lease_s,
                           what=f"job {held.job_id}: reading its limits")
        limit_s = (wall_clock_limit_s(record, settings) if record is not None
                   else settings.job_soft_time_limit_s)
        start = time.monotonic()
        renew_every = settings.job_lease_s / 3
        next_renew = start + renew_every
        cancel_seen: float | None = None
        while True:
            try:
                return proc.wait(timeout=POLL_S), Stop.EXITED
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                kill(proc)
                return proc.returncode, Stop.SHUTDOWN
            clock = time.monotonic()
            if clock - start >= limit_s:
                kill(proc)
                return proc.returncode, Stop.TIMED_OUT
            if clock >= next_renew:
                next_renew = clock + renew_every
                try:
                    current = held.renew(settings)
                except StoreUnavailable as exc:  # e.g. a PostgreSQL restart: try again soon
                    log.warning("job %s: could not renew its lease: %s", held.job_id, exc)
                    next_renew = clock + min(RENEW_RETRY_S, renew_every)
                    continue
                if current is None:
                    kill(proc)
                    return proc.returncode, Stop.LOST
                if current.cancel_requested and cancel_seen is None:
                    cancel_seen = clock
            if cancel_seen is not None and clock - cancel_seen >= CANCEL_GRACE_S:
                kill(proc)
                return proc.returncode, Stop.CANCELLED

    # --- job processes --------------------------------------------------------------------

    def spawn(self, args: list[str], cwd: Path) -> Popen:
        return subprocess.Popen([sys.executable, "-m", "worker.job_process", *args], cwd=cwd,
                                env=self.settings.as_env(), stdin=subprocess.PIPE,
                                preexec_fn=child_preexec(self.settings))

    def prepare_standby(self) -> None:
        """Start a standby job process unless a live one is waiting."""
        if self._standby is not None and self._standby.poll() is None:
            return
        base = self.settings.data_dir.resolve() / "scratch"
        base.mkdir(parents=True, exist_ok=True)
        self._standby = self.spawn(["--standby"], base)

    def start(self, held: Claim, scratch: Path) -> Popen:
        """Hand the job to the waiting standby, or start a process for it when there is none."""
        proc, self._standby = self._standby, None
        if proc is not None and proc.poll() is None and proc.stdin is not None:
            try:
                proc.stdin.write(f"{held.job_id} {held.attempt} {scratch}\n".encode())
                proc.stdin.close()
                return proc
            except OSError:  # it died meanwhile
                kill(proc)
        return self.spawn([held.job_id, str(held.attempt)], scratch)

    def close(self) -> None:
        """Stop the standby (a standby that is never assigned a job exits when stdin closes;
        this is for tests and an orderly shutdown)."""
        proc, self._standby = self._standby, None
        if proc is not None:
            kill(proc)

