"""Helpers to run ``python -m stack`` as users do (a process of its own), for e2e tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from api_tests.support.stacks import REPO_ROOT, mnist_root
from core.jobs.record import JobRecord
from core.settings import Settings
from core.storage.sqlite import SqliteJobStore
from core.tenants.tenancy import ADMIN_KEY_FILE
from stack import processes as P


@dataclass
class StackCommand:
    """A running ``python -m stack``: its process, the API's URL, its stderr file."""

    popen: subprocess.Popen[str]
    base_url: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def child_pid(self, marker: str) -> int:
        """The pid of the child whose command line holds ``marker`` (celery, uvicorn...)."""
        for pid in P.children_of(self.popen.pid):
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        raise AssertionError(f"no {marker} child of the stack:\n{self.stderr()}")

    def interrupt(self, sig: int = signal.SIGINT) -> float:
        """Send ``sig`` to the stack's process group (as Ctrl-C does to the foreground
        group); returns the seconds it took to exit."""
        start = time.monotonic()
        os.killpg(self.popen.pid, sig)
        returncode = self.popen.wait(30)
        assert returncode == 0, self.stderr()
        return time.monotonic() - start

    def close(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def stack_env(root: Path, **settings: Any) -> dict[str, str]:
    """The environment ``python -m stack`` runs with: short leases, its own ports and data."""
    values = {"data_dir": root / "data", "mnist_root": mnist_root(),
              "redis_url": f"redis://127.0.0.1:{P.free_port()}/0", "api_port": P.free_port(),
              "worker_device": "cpu", "job_lease_s": 3, "janitor_interval_s": 1,
              "worker_heartbeat_ttl_s": 5, **settings}
    return Settings.of(**values).as_env()


def start_stack_command(env: dict[str, str], stderr_path: Path) -> StackCommand:
    """Start ``python -m stack`` in a session of its own and wait for its banner."""
    with stderr_path.open("a") as stderr:
        popen = subprocess.Popen([sys.executable, "-m", "stack"], cwd=REPO_ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 start_new_session=True)
    assert popen.stdout is not None
    banner = popen.stdout.readline()
    url = f"http://127.0.0.1:{env['PRUNER_API_PORT']}"
    running = StackCommand(popen, url, stderr_path)
    assert banner.startswith(f"API listening on {url}"), (banner, running.stderr())
    # The local admin key the stack made on its first start (and prints after the banner).
    key_file = Path(env["PRUNER_DATA_DIR"]) / ADMIN_KEY_FILE
    deadline = time.monotonic() + 10
    while not key_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    _KEYS[url] = key_file.read_text().strip()
    return running


_KEYS: dict[str, str] = {}  # API url -> the local admin key of the stack serving it


def auth(base_url: str) -> dict[str, str]:
    """The Authorization header for the stack at ``base_url``."""
    return {"Authorization": f"Bearer {_KEYS[base_url]}"}


def random_mlp(path: Path) -> Path:
    """A state_dict of the mnist_mlp architecture, untrained (jobs run the same)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = {"fc1": nn.Linear(784, 256), "fc2": nn.Linear(256, 128), "fc3": nn.Linear(128, 10)}
    state = {f"{n}.{k}": v for n, layer in layers.items() for k, v in layer.state_dict().items()}
    torch.save(state, path)
    return path


def submit_job(base_url: str, model: Path, spec: dict[str, Any]) -> str:
    with model.open("rb") as f:
        response = httpx.post(f"{base_url}/v1/jobs", files={"model": (model.name, f)},
                              data={"spec": json.dumps(spec)}, timeout=30,
                              headers=auth(base_url))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def get_job(base_url: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/jobs/{job_id}", timeout=10, headers=auth(base_url))
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_job(base_url: str, job_id: str, done: Any, timeout: float = 120) -> dict[str, Any]:
    """Poll until ``done(job)``; transport errors (an API restarting) are waited out."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            job = get_job(base_url, job_id)
        except httpx.TransportError:
            job = {}
        if job and done(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never got there: {job}")


def finetuning(job: dict[str, Any]) -> bool:
    return job["status"] == "running" and (job["progress"] or {}).get("phase") == "finetuning"


def stored_job(data_dir: Path, job_id: str) -> JobRecord:
    """The job's record read from the store itself (works while the stack is down)."""
    record = SqliteJobStore.from_settings(Settings(data_dir=data_dir)).get(job_id)
    assert record is not None
    return record
