"""A job store that is down for a counted number of calls: the worker's side of a PostgreSQL
restart, made deterministic (the e2e test restarts a real PostgreSQL, where when the outage
meets a job is up to timing: api_tests/e2e/test_distributed_e2e.py)."""

from __future__ import annotations

import threading
from typing import Any

from core.jobs.record import JobRecord
from core.storage.protocols import JobStore, StoreUnavailable


class Outage:
    """Wraps a real store: the next ``reads`` calls of ``get`` and the next ``writes`` calls of
    ``transition`` raise ``StoreUnavailable`` (from whichever thread makes them) and reach
    nothing; every other call goes through."""

    def __init__(self, store: JobStore, *, reads: int = 0, writes: int = 0) -> None:
        self.store = store
        self.reads = reads
        self.writes = writes
        self.refused = 0
        self._lock = threading.Lock()

    def _down(self, kind: str) -> None:
        with self._lock:
            left = getattr(self, kind)
            if left > 0:
                setattr(self, kind, left - 1)
                self.refused += 1
                raise StoreUnavailable("connection refused (a test outage)")

    def get(self, job_id: str) -> JobRecord | None:
        self._down("reads")
        return self.store.get(job_id)

    def transition(self, *args: Any, **kwargs: Any) -> JobRecord | None:
        self._down("writes")
        return self.store.transition(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)
