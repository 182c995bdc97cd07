"""Tenants end to end on the real stack: API keys are written to no log and no file; fair
scheduling across tenants with the real worker; the ``pruner`` command with PRUNER_API_KEY.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_tests.e2e.stack_command import random_mlp
from api_tests.support.problems import assert_problem
from api_tests.support.stacks import REPO_ROOT, start_stack, submit, wait_for
from core.tenants.accounts import KEY_PREFIX
from core.tenants.tenancy import ADMIN_KEY_FILE
from stack.local import Stack

pytestmark = pytest.mark.e2e

QUICK = {"architecture": "mnist_mlp", "finetune": {"epochs": 0}}  # prune and evaluate only


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_mlp(tmp_path_factory.mktemp("tenants") / "mlp.state_dict.pt")


def new_tenant(stack: Stack, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    response = stack.client.post("/v1/admin/tenants", json={"name": name})
    assert response.status_code == 201, response.text
    return name


def new_key(stack: Stack, tenant: str) -> tuple[str, str]:
    """A jobs:read + jobs:write key of ``tenant``: (key, key id)."""
    response = stack.client.post("/v1/admin/keys", json={
        "tenant": tenant, "scopes": ["jobs:read", "jobs:write"], "name": "e2e"})
    assert response.status_code == 201, response.text
    created = response.json()
    return created["key"], created["info"]["key_id"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def as_tenant(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=30, headers=bearer(key))


def secret_of(key: str) -> str:
    """The part of a key that must never be written down: after ``prn_live_<key id>_``."""
    assert key.startswith(KEY_PREFIX)
    secret = key[len(KEY_PREFIX) + 13:]
    assert len(secret) == 43, key
    return secret


def files_holding(root: Path, needles: dict[str, str], skip: set[Path]) -> list[str]:
    """``name in path`` for every file under ``root`` (logs, databases, Redis's append-only
    file, job files) that holds one of ``needles``' values."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p not in skip):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a job's scratch copy removed as its process ends:
            continue  # gone from the disk, so it holds nothing any more
        found += [f"{name} in {path}" for name, needle in needles.items()
                  if needle.encode() in data]
    return found


# --- (a) keys are never written down ------------------------------------------------------


def test_api_keys_appear_in_no_log_and_no_file(stack: Stack, mlp: Path) -> None:
    tenant = new_tenant(stack, "leak")
    key, _ = new_key(stack, tenant)
    revoked, revoked_id = new_key(stack, tenant)

    response = submit(stack.client, mlp, QUICK, headers=bearer(key))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")  # a real key id
    assert_problem(stack.client.get("/v1/jobs", headers=bearer(wrong)), 401, "unauthorized")
    assert stack.client.get("/v1/jobs", headers=bearer(revoked)).status_code == 200
    assert stack.client.delete(f"/v1/admin/keys/{revoked_id}").status_code == 200
    assert_problem(stack.client.get(f"/v1/jobs/{job_id}", headers=bearer(revoked)), 401,
                   "unauthorized")
    with as_tenant(stack, key) as client:
        job = wait_for(client, job_id, timeout=60)
    assert job["status"] == "succeeded", job

    # The scan reads what the processes wrote: the worker's log names the job it ran.
    worker_logs = "".join(p.read_text(errors="replace")
                          for p in stack.log_dir.glob("worker-*.log"))
    assert job_id in worker_logs
    needles = {"the new key": secret_of(key), "the wrong key": secret_of(wrong),
               "the revoked key": secret_of(revoked), "the admin key": secret_of(stack.api_key)}
    skip = {stack.settings.data_dir / ADMIN_KEY_FILE}  # the admin key's own 0600 file
    assert files_holding(stack.root, needles, skip) == []


# --- (b) fairness ---------------------------------------------------------------------------


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    with start_stack(tmp_path) as running:  # one worker, idle: the order is the rule's alone
        yield running


def test_a_second_tenant_is_not_stuck_behind_a_burst(own_stack: Stack, mlp: Path) -> None:
    keys = {name: new_key(own_stack, new_tenant(own_stack, name))[0] for name in ("a", "b")}
    burst = [_submit(own_stack, mlp, keys["a"]) for _ in range(4)]
    late = _submit(own_stack, mlp, keys["b"])
    with as_tenant(own_stack, keys["a"]) as a, as_tenant(own_stack, keys["b"]) as b:
        assert wait_for(b, late, timeout=90)["status"] == "succeeded"
        # Until a's third job has started (then the rest of the burst is cancelled: the
        # order is known, waiting for the last job would only cost time).
        jobs = [wait_for(a, job_id, timeout=90) for job_id in burst[:2]]
        jobs.append(wait_for(a, burst[2], ("running", "succeeded"), timeout=90))
        for job_id in burst[2:]:
            a.post(f"/v1/jobs/{job_id}/cancel")  # clean-up only: whatever state it is in
        started = {job["id"]: datetime.fromisoformat(job["started_at"]) for job in jobs}
        started[late] = datetime.fromisoformat(b.get(f"/v1/jobs/{late}").json()["started_at"])
    assert [job["status"] for job in jobs[:2]] == ["succeeded", "succeeded"]
    assert started[burst[0]] < started[burst[1]] < started[burst[2]]  # a's own: oldest first
    assert started[late] < started[burst[2]], {j: started[j].isoformat() for j in started}


def _submit(stack: Stack, mlp: Path, key: str) -> str:
    response = submit(stack.client, mlp, QUICK, headers=bearer(key))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


# --- (c) the pruner command -----------------------------------------------------------------


def pruner(stack: Stack, env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client", *map(str, args)], cwd=REPO_ROOT,
                          env={**stack.env, "PRUNER_URL": stack.base_url, **env},
                          capture_output=True, text=True, timeout=120)


def test_the_cli_uses_pruner_api_key_and_says_when_it_is_missing(
        stack: Stack, mlp: Path, tmp_path: Path) -> None:
    assert not any(name == "PRUNER_API_KEY" for name in stack.env)
    key, _ = new_key(stack, new_tenant(stack, "cli"))
    done = pruner(stack, {"PRUNER_API_KEY": key}, "submit", mlp, "--arch", "mnist_mlp",
                  "--spec", '{"finetune": {"epochs": 0}}', "--wait", "-o", tmp_path)
    assert done.returncode == 0, done.stderr
    model_path = Path(done.stdout.split()[0])
    job_id = model_path.name.removesuffix("-pruned.pth")
    assert model_path.stat().st_size > 0
    mine: dict[str, Any] = stack.client.get(f"/v1/jobs/{job_id}",
                                            headers=bearer(key)).json()
    assert mine["status"] == "succeeded"
    # The job is that tenant's: the admin key's own tenant (local) does not see it.
    assert_problem(stack.client.get(f"/v1/jobs/{job_id}"), 404, "not_found")

    refused = pruner(stack, {}, "status", job_id)
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr == ("pruner: 401 unauthorized: this route needs an API key: "
                              "Authorization: Bearer <key>\n"), refused.stderr
