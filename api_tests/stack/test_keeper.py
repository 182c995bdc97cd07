"""The stack's keeper: a dead child is restarted after a backoff that doubles while it keeps
dying and starts over once it stayed up; stopping is bounded. Real (tiny) processes, a fake
clock."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest

from stack import keeper as K
from stack.processes import Proc, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def starter(tmp_path: Path, args: list[str]) -> tuple[list[Proc], K.Keeper, Clock]:
    started: list[Proc] = []

    def start() -> Proc:
        log = tmp_path / "child.log"
        log.write_text("last words\n")
        proc = Proc("child", subprocess.Popen(args), log)
        started.append(proc)
        return proc

    clock = Clock()
    keeper = K.Keeper(clock)
    keeper.add(start)
    return started, keeper, clock


def wait_dead(proc: Proc) -> None:
    proc.popen.wait(10)


def test_backoff_doubles_while_a_child_keeps_dying_then_starts_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started, keeper, clock = starter(tmp_path, ["true"])
    for expected_delay in (1, 2, 4, 8):
        wait_dead(started[-1])
        keeper.check()  # noticed: restart scheduled
        count = len(started)
        clock.now += expected_delay - 0.1
        keeper.check()
        assert len(started) == count  # not before its backoff
        clock.now += 0.1
        keeper.check()
        assert len(started) == count + 1
    err = capsys.readouterr().err
    assert "child (pid " in err and "exit status 0; restarting it in 8 s" in err
    assert "last words" in err and keeper.restarts == 4

    wait_dead(started[-1])
    clock.now += K.STABLE_S  # it had stayed up a minute before dying: back to 1 s
    keeper.check()
    clock.now += 1
    keeper.check()
    assert len(started) == 6


def test_backoff_is_capped() -> None:
    child = K.Child(start=lambda: None, proc=None, started_at=0.0, failures=20)  # type: ignore[arg-type]
    assert child.backoff_s() == K.MAX_BACKOFF_S


def test_stop_kills_what_ignores_sigterm_within_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(K, "STOP_APPS_S", 0.5)
    ready = tmp_path / "trap-installed"
    script = f"trap '' TERM; : > {shlex.quote(str(ready))}; sleep 30"
    started, keeper, _ = starter(tmp_path, ["sh", "-c", script])
    # SIGTERM before the trap is in place would end the shell (-15): wait for the shell to say
    # it ignores SIGTERM now.
    wait_until(ready.exists, "the child's SIGTERM trap", timeout=10, proc=started[0])
    begin = time.monotonic()
    keeper.stop()
    assert started[0].popen.returncode == -9
    assert time.monotonic() - begin < 3
