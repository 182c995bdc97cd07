"""When and how long to wait before repeating a request.

429 (queue full) and 503 (broker unavailable) are answers the service expects to change: it
says when in ``Retry-After`` (seconds, or an HTTP date), which is honoured; without one the
wait doubles from ``FIRST_BACKOFF_S``. Connection errors are retried only where repeating the
request is safe: reads, and a submission carrying its ``Idempotency-Key``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503})
FIRST_BACKOFF_S = 0.5


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # repeats after the first try
    max_wait_s: float = 60.0  # no single wait longer than this, whatever Retry-After says

    def backoff_s(self, attempt: int) -> float:
        """Wait before repeat ``attempt`` (0-based) without a Retry-After: doubling, with
        jitter so that many clients refused at once do not come back at once."""
        base = FIRST_BACKOFF_S * 2.0 ** attempt
        return min(self.max_wait_s, base * random.uniform(0.75, 1.25))

    def wait_s(self, response: httpx.Response | None, attempt: int) -> float:
        told = retry_after_s(response) if response is not None else None
        if told is None:
            return self.backoff_s(attempt)
        return min(self.max_wait_s, told)


def retry_after_s(response: httpx.Response, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
