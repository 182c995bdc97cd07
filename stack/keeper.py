"""Keep the stack's children running: a child that dies is restarted with backoff.

``python -m stack`` hands its children (redis-server, a Celery worker, the API) to a
``Keeper``. When one dies (a crash, an OOM kill, ``kill -9``), the others keep serving and the
dead one is started again after 1 s, then 2, 4... up to ``MAX_BACKOFF_S`` while it keeps
dying; a child that stayed up ``STABLE_S`` starts from 1 s again. Jobs a dead worker held
are recovered as after any worker crash: its job process dies with it (PR_SET_PDEATHSIG)
and a janitor re-queues the job when its lease expires.

Stopping is bounded: the API and the workers get SIGTERM together (a worker hands its
running job back to the queue), then Redis, which they need until they exit; whatever is
still alive at its deadline is killed.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from stack.processes import Proc, stop_all

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_S = 60.0  # up this long: the next death starts the backoff from the beginning
# A stop within 10 s: the API and workers get STOP_APPS_S, Redis STOP_REDIS_S after them.
STOP_APPS_S = 6.0
STOP_REDIS_S = 2.5


def say(message: str) -> None:
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    print(f"{stamp} stack: {message}", file=sys.stderr, flush=True)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


@dataclass
class Child:
    """One supervised process and its restart state."""

    start: Callable[[], Proc]
    proc: Proc
    started_at: float
    failures: int = 0  # deaths in a row, each within STABLE_S of its start
    restart_at: float | None = None  # set while dead: when it starts again

    @property
    def name(self) -> str:
        return self.proc.name

    def backoff_s(self) -> float:
        return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** (self.failures - 1))


class Keeper:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.children: list[Child] = []
        self.clock = clock
        self.restarts = 0

    def add(self, start: Callable[[], Proc]) -> Proc:
        """Start a child and keep it running from now on."""
        proc = start()
        self.children.append(Child(start, proc, self.clock()))
        return proc

    def check(self) -> None:
        """Notice dead children and restart those whose backoff has passed; call often."""
        now = self.clock()
        for child in self.children:
            if child.restart_at is None:
                if child.proc.alive():
                    continue
                self._dead(child, now)
            if child.restart_at is not None and now >= child.restart_at:
                self._restart(child, now)

    def _dead(self, child: Child, now: float) -> None:
        if now - child.started_at >= STABLE_S:
            child.failures = 0
        child.failures += 1
        delay = child.backoff_s()
        child.restart_at = now + delay
        tail = "\n".join("    " + line for line in child.proc.log_tail(10).splitlines())
        say(f"{child.name} (pid {child.proc.pid}) exited: "
            f"{describe_exit(child.proc.popen.returncode)}; restarting it in {delay:.0f} s "
            f"(the others keep serving). Last lines of {child.proc.log_path}:\n{tail}")

    def _restart(self, child: Child, now: float) -> None:
        try:
            child.proc = child.start()
        except OSError as exc:  # e.g. the binary vanished: try again after a longer wait
            child.failures += 1
            child.restart_at = now + child.backoff_s()
            say(f"could not restart {child.name}: {exc}")
            return
        child.started_at, child.restart_at = now, None
        self.restarts += 1
        say(f"{child.name} restarted (pid {child.proc.pid})")

    def stop(self, redis_names: tuple[str, ...] = ("redis",)) -> None:
        """SIGTERM the API and workers together, then Redis; kill stragglers at deadlines."""
        apps = [c.proc for c in self.children if c.name not in redis_names]
        brokers = [c.proc for c in self.children if c.name in redis_names]
        stop_all(apps, STOP_APPS_S)
        stop_all(brokers, STOP_REDIS_S)
