"""Riding out a short outage of the job store (a PostgreSQL restart or failover) on the worker
side: the steps that decide a job's fate are retried for a while instead of failing the job.

The API answers such an outage with 503 + Retry-After and lets the client come back. A worker
has no client to hand the wait to: a job process whose first read or last write meets a
restarting database would exit without an outcome, and its supervisor would count the crash
as an attempt (and rerun the whole job). So the worker retries those steps, ``patiently``,
for up to the job's lease: past it the janitor of another worker treats the job as orphaned
anyway, and waiting longer would only hold a job nobody can finish.

Only ``StoreUnavailable`` is retried: it means "nothing was recorded by the call that raised
it" (``core/storage/protocols.py``), and every step retried here is a compare-and-set or a
read, so a retry after a commit whose answer was lost reads the committed state and does no
harm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from core.storage.protocols import StoreUnavailable

log = logging.getLogger("core.storage.outages")

T = TypeVar("T")

FIRST_PAUSE_S = 0.2
LONGEST_PAUSE_S = 2.0


def patiently(call: Callable[[], T], *, within_s: float, what: str,
              sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> T:
    """``call()``, retried with growing pauses (0.2 s doubling to 2 s) while it raises
    ``StoreUnavailable``, for up to ``within_s`` seconds; then the last error propagates.
    ``what`` names the step in the log."""
    deadline = clock() + within_s
    pause = FIRST_PAUSE_S
    tries = 0
    while True:
        tries += 1
        try:
            result = call()
        except StoreUnavailable as exc:
            left = deadline - clock()
            if left <= 0:
                log.error("%s: the store is still unavailable after %d tries: %s", what,
                          tries, exc)
                raise
            log.warning("%s: the store is unavailable (%s); retrying", what, exc)
            sleep(min(pause, left))
            pause = min(pause * 2, LONGEST_PAUSE_S)
        else:
            if tries > 1:
                log.info("%s: done after %d tries", what, tries)
            return result
