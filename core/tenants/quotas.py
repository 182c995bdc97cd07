"""A tenant's quotas: which limit a submission hit, the limits the job store enforces inside
its transaction, and the running-jobs limits that fair scheduling reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum


class QuotaKind(StrEnum):
    """Which tenant limit a submission hit (the problem's ``code``)."""

    QUEUED = "quota_queued"
    STORAGE = "quota_storage"
    RATE = "quota_rate"


@dataclass(frozen=True)
class Quota:
    """A tenant's limits that ``create`` enforces inside its transaction (None: no limit)."""

    max_queued: int | None = None
    max_stored_bytes: int | None = None
    submissions_per_minute: int | None = None


class QuotaExceeded(Exception):
    def __init__(self, kind: QuotaKind, limit: int, current: int, retry_after_s: int) -> None:
        super().__init__(f"{kind.value}: {current} of {limit}")
        self.kind = kind
        self.limit = limit
        self.current = current
        self.retry_after_s = retry_after_s


# Given the tenants that have queued jobs, their running-jobs limits (absent or 0: none).
RunningLimits = Callable[[Sequence[str]], Mapping[str, int]]
