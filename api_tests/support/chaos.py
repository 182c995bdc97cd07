"""What the chaos tests share on every backend: job specs of known length, a submit that
retries a 503 as a well-behaved client does, and waits on conditions (never on sleeps)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from api_tests.support.stacks import submit
from stack import processes as P
from stack.local import Stack

QUICK = {"finetune": {"epochs": 0}}  # prune and evaluate only: a few seconds
MID = {"finetune": {"epochs": 1, "batch_size": 256}}  # seconds of fine-tuning to hit
LONG = {"finetune": {"epochs": 30, "batch_size": 32}}  # minutes: always "mid-job" when hit


def job_of(stack: Stack, job_id: str) -> dict[str, Any]:
    response = stack.client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def accepted(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def post_job(stack: Stack, model: Path, spec: dict[str, Any]) -> str:
    """Submit as a well-behaved client does: a 503 carries Retry-After, so retry (a few
    times, quickly). Known: right after a Redis restart the API's pooled Redis connections
    are stale and the first submissions may answer 503 (never 500)."""
    for _ in range(5):
        response = submit(stack.client, model, spec)
        if response.status_code != 503:
            break
        assert int(response.headers["retry-after"]) > 0
        time.sleep(0.5)
    return accepted(response)


def wait_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes {pids} still alive")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def append_only_bytes(stack: Stack) -> bytes:
    """What Redis has written to its append-only file(s) under the stack's redis dir."""
    folder = stack.root / "redis"
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*.aof*")) if p.is_file())


def wait_in_append_only_file(stack: Stack, job_ids: list[str], timeout: float = 10) -> None:
    """Wait until Redis has written every job's task message (its ``argsrepr`` header names
    the job id in plain text) to its append-only file: from then on a SIGKILL of redis-server
    cannot lose it (the write is in the OS's page cache; the every-second fsync only matters
    for a power cut). With ``appendfsync everysec`` Redis may postpone that write while an
    fsync runs, after it answered: this is the event a fixed sleep guessed at."""
    P.wait_until(lambda: all(j.encode() in append_only_bytes(stack) for j in job_ids),
                 f"jobs {job_ids} in Redis's append-only file", timeout)
