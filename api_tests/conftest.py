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
  the 784-256-128-10 MLP trained one epoch on MNIST by a plain PyTorch loop (the model class
  users write: ``fc1``, ``fc2``, ``fc3``), trained once per session.
- ``mnist_test`` (session): the normalised MNIST test split as tensors ``(images, labels)``.

Helpers (plain functions): ``submit(client, model_path, spec, headers=None)`` -> response;
``wait_for(client, job_id, statuses=terminal, timeout)`` -> the job JSON;
``accuracy(model, mnist_test)``.

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


# --- models and data (torch is imported lazily: only these fixtures need it) -------------------


@dataclass
class TrainedMLP:
    torchscript: Path
    state_dict: Path


def _mlp_class() -> Any:
    """The plain PyTorch MLP users write (784-256-128-10, fc1/fc2/fc3)."""
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(784, 256)
            self.fc2 = nn.Linear(256, 128)
            self.fc3 = nn.Linear(128, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.flatten(x, 1)
            x = torch.relu(self.fc1(x))
            x = torch.relu(self.fc2(x))
            return self.fc3(x)

    return MLP


def _mnist(train: bool) -> tuple[Any, Any]:
    from torchvision.datasets import MNIST

    data = MNIST(str(mnist_root()), train=train, download=False)
    images = data.data.unsqueeze(1).float().div_(255).sub_(0.1307).div_(0.3081)
    return images, data.targets  # (N, 1, 28, 28), (N,)


@pytest.fixture(scope="session")
def mnist_test() -> tuple[Any, Any]:
    return _mnist(train=False)


def accuracy(model: Any, mnist_test: tuple[Any, Any]) -> float:
    import torch

    images, labels = mnist_test
    with torch.no_grad():
        predicted = torch.cat([model(x).argmax(1) for x in images.split(2000)])
    return float((predicted == labels).float().mean())


@pytest.fixture(scope="session")
def trained_mlp(tmp_path_factory: pytest.TempPathFactory) -> TrainedMLP:
    """The MLP trained for one epoch (Adam, lr 1e-3, batch 64), saved both ways."""
    import torch

    torch.manual_seed(0)
    model = _mlp_class()()
    images, labels = _mnist(train=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(labels))
    for batch in order.split(64):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("models")
    model.eval()
    scripted = folder / "mlp.torchscript.pt"
    torch.jit.save(torch.jit.script(model), str(scripted))
    state = folder / "mlp.state_dict.pt"
    torch.save(model.state_dict(), state)
    return TrainedMLP(torchscript=scripted, state_dict=state)
