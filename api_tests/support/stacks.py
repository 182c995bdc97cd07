"""The real stack as processes, and plain functions that drive it over HTTP.

``start_stack(root, **overrides)`` runs redis-server, one Celery worker and uvicorn under
``root`` with ``TEST_SETTINGS`` (short leases and janitor interval, device cpu, MNIST from
``PRUNER_MNIST_ROOT`` or ../shared/datasets); a test that kills or restarts processes uses
its own, never the session's ``stack`` fixture.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from stack.local import Stack, local_stack

REPO_ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "cancelled")


def mnist_root() -> Path:
    return Path(os.environ.get("PRUNER_MNIST_ROOT", "../shared/datasets")).resolve()


# Defaults for every test stack; a test may override any (as Settings field names).
TEST_SETTINGS: dict[str, Any] = {
    "worker_device": "cpu",
    "job_soft_time_limit_s": 240,
    "job_hard_time_limit_s": 250,
    "broker_visibility_timeout_s": 260,
    "job_lease_s": 3.0,
    "janitor_interval_s": 1.0,
    "worker_heartbeat_ttl_s": 5,
    "max_attempts": 3,
    "log_level": "INFO",
}


@contextmanager
def start_stack(root: Path, **overrides: Any) -> Iterator[Stack]:
    """Start redis-server, one worker and the API under ``root`` with the test settings
    (``TEST_SETTINGS``, then ``overrides``); stop them on exit."""
    values = {**TEST_SETTINGS, "mnist_root": mnist_root(), **overrides}
    with local_stack(root, values) as running:
        yield running


@dataclass(frozen=True)
class TrainedMLP:
    """The reference MLP (``api_tests.models.UserMLP``) trained once, saved as users save it
    (the ``trained_mlp`` fixture)."""

    torchscript: Path
    state_dict: Path


def submit(client: httpx.Client, model_path: Path, spec: dict[str, Any],
           headers: dict[str, str] | None = None) -> httpx.Response:
    with model_path.open("rb") as f:
        return client.post("/v1/jobs", files={"model": (model_path.name, f)},
                           data={"spec": json.dumps(spec)}, headers=headers)


def wait_for(client: httpx.Client, job_id: str, statuses: tuple[str, ...] = TERMINAL,
             timeout: float = 180.0) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            response = client.get(f"/v1/jobs/{job_id}")
        except httpx.TransportError:  # an API being restarted
            time.sleep(0.2)
            continue
        if response.status_code == 200:
            job = response.json()
            if job["status"] in statuses:
                return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout} s: {job}")


def wait_running(stack: Stack, job_id: str, phase: str = "finetuning",
                 timeout: float = 90.0) -> dict[str, Any]:
    """Poll until the job runs and its progress shows ``phase``; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = stack.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] == "running" and (job["progress"] or {}).get("phase") == phase:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {phase}: {stack.logs()}")
