"""UploadPace against a hand-driven clock: each window must bring its minimum, silence is
judged when the window ends, and the total time cuts even a fast enough upload."""

from __future__ import annotations

import pytest

from service.upload_pace import TOO_LONG, TOO_SLOW, UploadPace, UploadTooSlow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pace(clock: Clock, min_rate: int = 100, window_s: float = 10, max_s: float = 60) -> UploadPace:
    return UploadPace(min_rate, window_s, max_s, clock=clock)


def test_a_window_that_brings_its_minimum_passes_and_the_next_starts_empty() -> None:
    clock = Clock()
    p = pace(clock)
    clock.now += 9
    p.received(1000)  # 100 B/s over the 10 s window
    assert p.wait_s() == 1
    clock.now += 10
    p.received(999)  # in the second window, which ends at +20
    clock.now += 1
    with pytest.raises(UploadTooSlow) as cut:
        p.received(5000)  # too late: the second window brought 999 < 1000
    assert cut.value.reason == TOO_SLOW and cut.value.status == 408


def test_silence_is_waited_for_only_until_the_window_ends() -> None:
    clock = Clock()
    p = pace(clock)
    assert p.wait_s() == 10
    clock.now += 10
    with pytest.raises(UploadTooSlow):
        p.check()


def test_the_total_time_cuts_a_fast_enough_upload() -> None:
    clock = Clock()
    p = pace(clock, window_s=10, max_s=25)
    for step in (5, 10, 8):  # at +5, +15, +23: every window brings 5000 >= 1000
        clock.now += step
        p.received(5000)
    assert p.wait_s() == 2  # the total time ends before the third window does
    clock.now += 2
    with pytest.raises(UploadTooSlow) as cut:
        p.received(5000)
    assert cut.value.reason == TOO_LONG
    assert cut.value.headers == {"Connection": "close"}


def test_no_minimum_rate_leaves_only_the_total_time() -> None:
    clock = Clock()
    p = pace(clock, min_rate=0, max_s=25)
    clock.now += 20
    p.check()
    assert p.wait_s() == 5
