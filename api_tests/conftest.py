"""Shared fixtures: the real service as processes, and plain helpers to drive it.

Fixtures (reuse them; their shape is stable):

- ``stack`` (session): a ``Stack`` running a real redis-server, uvicorn (``service.main:app``)
  and one Celery worker (solo pool), on free ports, with a temporary data dir. Attributes:
  ``base_url``, ``client`` (an ``httpx.Client`` on base_url), ``settings`` (the ``Settings``
  the children run with), ``env`` (their environment), ``redis`` / ``api`` / ``worker``
  (``stack.processes.Proc``: ``.pid``, ``.alive()``, ``.log_tail()``), and helpers
  ``restart_api()``, ``restart_worker()``, ``restart_redis()``, ``job_processes()`` (pids of
  the worker's live job processes). Tests that kill or restart processes must NOT use this
  shared one: they call ``start_stack(tmp_path, **setting_overrides)`` (a context manager
  yielding their own ``Stack``).
- ``trained_mlp`` (session): a ``TrainedMLP`` with ``torchscript`` and ``state_dict`` paths of
  the reference 784-256-128-10 MLP (``api_tests.models.UserMLP``: ``fc1``, ``fc2``, ``fc3``)
  trained one epoch on MNIST by a plain PyTorch loop, once per session: the suite's only
  trained model. Tests using it are marked ``slow`` or ``e2e``.
- ``mnist_test`` (session): the normalised MNIST test split as tensors ``(images, labels)``.
- ``postgres_server`` / ``s3_server`` (session): a real PostgreSQL / SeaweedFS S3 server in a
  temp dir (``api_tests.real_services``); skipped with the reason where not installed.

Helpers (plain functions): ``submit(client, model_path, spec, headers=None)`` -> response;
``wait_for(client, job_id, statuses=terminal, timeout)`` -> the job JSON;
``wait_running(stack, job_id, phase="finetuning")`` -> the job JSON once it runs that phase;
``assert_problem(response, status, code)`` -> the problem+json body (every test that checks
an error response uses it). ``api_tests.models.accuracy(model, mnist_test)``;
``api_tests.core.factories.make_record(...)`` builds every job record a test writes itself.

A test using ``stack`` must be marked ``e2e``, one using ``trained_mlp`` or ``mnist_test``
``slow`` (or ``e2e``): collection refuses it otherwise, so ``-m "not e2e and not slow"`` is
the fast inner loop.

Settings for tests: short leases and janitor interval (seconds), PRUNER_MNIST_ROOT from the
environment or ../shared/datasets, device cpu.
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
import pytest

from stack.local import Stack, local_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


# --- helpers ----------------------------------------------------------------------------------


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


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is RFC 9457 problem+json with this status and code; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["type"] == f"urn:pruning-service:problem:{code}"
    assert body["title"] and body["detail"]
    return body


# --- models and data (torch is imported lazily: only these fixtures need it) -------------------


@dataclass(frozen=True)
class TrainedMLP:
    """The reference MLP (``api_tests.models.UserMLP``) trained once, saved as users save it."""

    torchscript: Path
    state_dict: Path


@pytest.fixture(scope="session")
def trained_mlp(tmp_path_factory: pytest.TempPathFactory) -> TrainedMLP:
    """The suite's one trained model (about 20 s of CPU): every test that uploads or prunes a
    trained MLP uses it, so a session trains it once."""
    import torch

    from api_tests.models import train_user_mlp

    model = train_user_mlp(mnist_root())
    folder = tmp_path_factory.mktemp("models")
    scripted, state = folder / "mlp.torchscript.pt", folder / "mlp.state_dict.pt"
    torch.jit.save(torch.jit.script(model), str(scripted))
    torch.save(model.state_dict(), state)
    return TrainedMLP(torchscript=scripted, state_dict=state)


@pytest.fixture(scope="session")
def mnist_test() -> Any:
    """The normalised MNIST test split, ``(images, labels)``: for ``models.accuracy``."""
    from api_tests.models import load_mnist

    return load_mnist(mnist_root(), train=False)


# --- markers: the fast inner loop (-m "not e2e and not slow") must really be fast -------------

NEEDS_MARKER = {"stack": "e2e", "trained_mlp": "slow", "mnist_test": "slow"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test that uses a costly fixture without the marker that keeps it out of the
    inner loop (``e2e`` also counts for the training fixtures: it is never in the loop)."""
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        for fixture, marker in NEEDS_MARKER.items():
            if fixture in getattr(item, "fixturenames", ()) and not {marker, "e2e"} & marks:
                raise pytest.UsageError(
                    f"{item.nodeid} uses the {fixture!r} fixture: mark it "
                    f"@pytest.mark.{marker}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    from api_tests.real_services import PostgresServer

    try:
        server = PostgresServer()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    from api_tests.real_services import SeaweedServer

    try:
        server = SeaweedServer()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"S3 server unavailable: {exc}")
    yield server
    server.stop()
