"""``patiently``: a step that meets an unavailable store is retried with growing pauses for a
bounded time; other errors are not retried."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.storage.outages import patiently
from core.storage.protocols import StoreUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def failing(times: int,
            error: Exception | None = None) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error or StoreUnavailable("down")
        return "done"

    return calls, call


def test_an_outage_shorter_than_the_grace_is_ridden_out() -> None:
    clock = Clock()
    calls, call = failing(5)
    assert patiently(call, within_s=30, what="t", sleep=clock.sleep, clock=clock) == "done"
    assert len(calls) == 6
    assert clock.pauses == [0.2, 0.4, 0.8, 1.6, 2.0]  # doubling, capped at 2 s


def test_an_outage_longer_than_the_grace_raises_the_last_error() -> None:
    clock = Clock()
    calls, call = failing(1000)
    with pytest.raises(StoreUnavailable):
        patiently(call, within_s=5, what="t", sleep=clock.sleep, clock=clock)
    assert clock.now == pytest.approx(5.0)  # the last pause is cut to the deadline
    assert len(calls) == 6  # 0.2 + 0.4 + 0.8 + 1.6 + 2.0 = 5.0, then one last try


def test_other_errors_are_not_retried() -> None:
    clock = Clock()
    calls, call = failing(1, ValueError("a bug"))
    with pytest.raises(ValueError):
        patiently(call, within_s=30, what="t", sleep=clock.sleep, clock=clock)
    assert len(calls) == 1 and clock.pauses == []
