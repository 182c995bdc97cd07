"""``python -m stack`` keeps running when a child dies, and stops promptly when asked.

Each test runs the real command (a process of its own, in its own session, as in a terminal)
and kills its children by pid.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api_tests.e2e.stack_command import (
    StackCommand,
    finetuning,
    random_mlp,
    stack_env,
    start_stack_command,
    stored_job,
    submit_job,
    wait_job,
)
from core.jobs.record import JobStatus
from stack import processes as P

pytestmark = pytest.mark.e2e

# Seconds of fine-tuning (1 epoch of 235 steps), so that a kill lands mid-job.
MID = {"architecture": "mnist_mlp", "finetune": {"epochs": 1, "batch_size": 256}}
LONG = {"architecture": "mnist_mlp", "finetune": {"epochs": 20, "batch_size": 32}}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return random_mlp(tmp_path / "mlp.pt")


@pytest.fixture
def commands() -> Iterator[list[StackCommand]]:
    started: list[StackCommand] = []
    yield started
    for command in started:
        command.close()


def _healthy_again(url: str, check: str = "/readyz") -> None:
    P.wait_until(lambda: P.http_ok(url + check), f"{url}{check}", timeout=90)


def test_dead_children_are_restarted_and_the_job_recovered(
    tmp_path: Path, model: Path, commands: list[StackCommand]
) -> None:
    env = stack_env(tmp_path)
    stack = start_stack_command(env, tmp_path / "stack.err")
    commands.append(stack)
    url = stack.base_url

    # The worker dies mid-job: the stack restarts it; the job runs again and succeeds.
    job_id = submit_job(url, model, MID)
    wait_job(url, job_id, finetuning)
    worker = stack.child_pid("celery")
    os.kill(worker, signal.SIGKILL)
    assert httpx.get(f"{url}/healthz").status_code == 200  # the API keeps serving meanwhile
    job = wait_job(url, job_id, lambda j: j["status"] in ("succeeded", "failed"), timeout=180)
    assert (job["status"], job["attempts"]) == ("succeeded", 2), (job, stack.stderr())
    assert stack.child_pid("celery") != worker
    assert "killed by SIGKILL; restarting it in 1 s" in stack.stderr()

    # The API dies: restarted; Redis dies: restarted, and the worker finds it again.
    api = stack.child_pid("uvicorn")
    os.kill(api, signal.SIGKILL)
    _healthy_again(url, "/healthz")
    assert stack.child_pid("uvicorn") != api
    os.kill(stack.child_pid("redis-server"), signal.SIGKILL)
    _healthy_again(url)
    assert stack.stderr().count(" restarted (pid ") == 3, stack.stderr()
    assert stack.popen.poll() is None
    assert stack.interrupt(signal.SIGTERM) < 10


def test_ctrl_c_and_sigterm_mid_job_hand_the_job_back_without_using_an_attempt(
    tmp_path: Path, model: Path, commands: list[StackCommand]
) -> None:
    """Ctrl-C (SIGINT to the foreground group) mid-job: the stack stops within 10 s and the
    job is queued with no attempt used; the next start runs it; SIGTERM does the same."""
    env = stack_env(tmp_path)
    data_dir = Path(env["PRUNER_DATA_DIR"])
    stack = start_stack_command(env, tmp_path / "stack.err")
    commands.append(stack)
    job_id = submit_job(stack.base_url, model, LONG)
    for sig in (signal.SIGINT, signal.SIGTERM):
        job = wait_job(stack.base_url, job_id, finetuning)
        assert job["attempts"] == 1  # the first attempt, each time
        children = P.children_of(stack.popen.pid)
        assert stack.interrupt(sig) < 10, stack.stderr()
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
        record = stored_job(data_dir, job_id)
        assert (record.status, record.attempts, record.error) == (JobStatus.QUEUED, 0, None)
        if sig == signal.SIGINT:  # the next start picks it up
            stack = start_stack_command(env, tmp_path / "stack.err")
            commands.append(stack)
