"""How long an upload may take: a minimum rate over a sliding window, and a total time.

A client that sends one byte a second holds a connection, a request slot and a scratch file
for as long as it likes; a few hundred such clients would hold them all. ``UploadPace``
judges the stream as it arrives and, between chunks, says how long to wait for the next one,
so a client that goes silent is cut as surely as one that trickles: each ``window_s`` must
bring at least ``min_bytes_per_s * window_s`` bytes, and the whole body must arrive within
``max_s``. Either failure is a 408 (``request_timeout``) that closes the connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.settings import Settings
from service.errors import RequestTimeout

TOO_SLOW, TOO_LONG = "too_slow", "too_long"


class UploadTooSlow(RequestTimeout):
    """408 for an upload below the minimum rate or past the total time; ``reason`` says
    which (``too_slow`` or ``too_long``, the metrics label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, headers={"Connection": "close"})
        self.reason = reason


@dataclass
class UploadPace:
    min_bytes_per_s: int  # 0: no minimum rate
    window_s: float
    max_s: float
    clock: Callable[[], float] = time.monotonic
    start: float = field(init=False)
    window_start: float = field(init=False)
    window_bytes: int = 0

    def __post_init__(self) -> None:
        self.start = self.window_start = self.clock()

    @classmethod
    def of(cls, settings: Settings) -> UploadPace:
        return cls(settings.upload_min_bytes_per_s, settings.upload_rate_window_s,
                   settings.upload_max_s)

    def received(self, n: int) -> None:
        """Count a chunk (in the window it arrived in); raise ``UploadTooSlow`` when a
        window that ended before it fell short."""
        self.check()
        self.window_bytes += n

    def wait_s(self) -> float:
        """How long to wait for the next chunk before judging the upload again."""
        now = self.check()
        ends = self.start + self.max_s
        if self.min_bytes_per_s:
            ends = min(ends, self.window_start + self.window_s)
        return max(0.0, ends - now)

    def check(self) -> float:
        """Judge every window that ended by now, and the total time; returns now."""
        now = self.clock()
        if now - self.start >= self.max_s:
            raise UploadTooSlow(TOO_LONG, f"the upload took longer than {self.max_s:g} s")
        while self.min_bytes_per_s and now >= self.window_start + self.window_s:
            needed = self.min_bytes_per_s * self.window_s
            if self.window_bytes < needed:
                raise UploadTooSlow(
                    TOO_SLOW, f"the upload sent {self.window_bytes} bytes in "
                    f"{self.window_s:g} s, under the minimum of {self.min_bytes_per_s} "
                    "bytes/s")
            self.window_start += self.window_s
            self.window_bytes = 0
        return now
