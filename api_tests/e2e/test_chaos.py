"""Chaos: nothing accepted is lost when processes die, Redis restarts or requests repeat.

These tests start their OWN redis-server, API and worker (a module-scoped ``chaos`` stack, not
the shared session one) and kill or restart only those processes, by pid. Each test leaves
the stack healthy for the next. A test that must hold on every backend takes ``any_backend``
and runs on this stack and on the distributed one (PostgreSQL + S3); what only several hosts
can show is in test_distributed_e2e.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from api_tests.support.chaos import (
    LONG,
    MID,
    QUICK,
    job_of,
    post_job,
    wait_gone,
    wait_in_append_only_file,
)
from api_tests.support.problems import assert_problem
from api_tests.support.stacks import TrainedMLP, start_stack, submit, wait_for, wait_running
from stack import processes as P
from stack.local import Stack
from worker.engine import scripting

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("chaos")) as stack:
        yield stack


def job_files(stack: Stack, job_id: str) -> list[str]:
    return sorted(p.name for p in (stack.settings.data_dir / "jobs" / job_id).iterdir())


def assert_succeeded_once(stack: Stack, job_id: str, attempts: int) -> None:
    job = wait_for(stack.client, job_id, timeout=180)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == attempts
    files = job_files(stack, job_id)
    assert not [f for f in files if f.startswith(".tmp")], files  # no half-written artifact
    assert "report.json" in files and "model.torchscript.pt" in files, files
    model = stack.client.get(f"/v1/jobs/{job_id}/model")
    assert model.status_code == 200
    assert model.headers["etag"].strip('"') == job["model"]["sha256"]


# --- killed processes ---------------------------------------------------------------------------


def test_worker_sigkill_mid_job_reruns_and_succeeds_once(chaos: Stack, trained_mlp: TrainedMLP
                                                         ) -> None:
    job_id = post_job(chaos, trained_mlp.torchscript, MID)
    wait_running(chaos, job_id)
    children = chaos.job_processes(job_id)
    assert len(children) == 1
    P.kill(chaos.worker)
    wait_gone(children)  # the job process dies with its worker: no orphan, no twin
    assert job_of(chaos, job_id)["status"] == "running"  # until its lease expires
    chaos.worker = chaos.start_worker()  # its janitor re-queues the job
    assert_succeeded_once(chaos, job_id, attempts=2)


def test_job_process_sigkill_is_retried(chaos: Stack, trained_mlp: TrainedMLP) -> None:
    job_id = post_job(chaos, trained_mlp.torchscript, MID)
    wait_running(chaos, job_id)
    (child,) = chaos.job_processes(job_id)
    os.kill(child, signal.SIGKILL)
    assert_succeeded_once(chaos, job_id, attempts=2)
    assert chaos.worker.alive()


def test_poison_job_fails_after_max_attempts_and_worker_goes_on(
    chaos: Stack, trained_mlp: TrainedMLP
) -> None:
    job_id = post_job(chaos, trained_mlp.torchscript, LONG)
    killed: set[int] = set()
    deadline = time.monotonic() + 120
    while job_of(chaos, job_id)["status"] not in ("failed", "succeeded", "cancelled"):
        assert time.monotonic() < deadline, chaos.logs()
        for pid in chaos.job_processes(job_id):  # the job process dies on every attempt
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.05)
    job = job_of(chaos, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "crashed"
    assert "3 attempts" in job["error"]["message"]
    assert job["attempts"] == chaos.settings.max_attempts == len(killed) == 3
    assert_succeeded_once(chaos, post_job(chaos, trained_mlp.torchscript, QUICK),
                          attempts=1)


def test_sigterm_mid_job_hands_the_job_back(chaos: Stack, trained_mlp: TrainedMLP) -> None:
    """SIGTERM (docker stop, Ctrl-C of the stack) mid-job: the worker exits at once and the
    running job is queued again with its attempt given back; queued jobs stay queued."""
    job_id = post_job(chaos, trained_mlp.torchscript, MID)
    wait_running(chaos, job_id)
    queued_id = post_job(chaos, trained_mlp.torchscript, QUICK)
    chaos.worker.signal(signal.SIGTERM)
    chaos.worker.popen.wait(10)
    handed_back = job_of(chaos, job_id)
    assert (handed_back["status"], handed_back["attempts"]) == ("queued", 0)
    assert job_of(chaos, queued_id)["status"] == "queued"  # not lost
    chaos.worker = chaos.start_worker()
    assert_succeeded_once(chaos, job_id, attempts=1)
    assert_succeeded_once(chaos, queued_id, attempts=1)


# --- Redis ----------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite+files", "postgres+s3"])
def any_backend(request: pytest.FixtureRequest) -> Stack:
    """The chaos stack on each backend: this module's own (SQLite and local files), or the
    distributed one (PostgreSQL and S3, ``dist`` in api_tests/e2e/conftest.py)."""
    stack: Stack = request.getfixturevalue(
        {"sqlite+files": "chaos", "postgres+s3": "dist"}[request.param])
    return stack


def test_redis_killed_and_restarted_keeps_every_accepted_job(
    any_backend: Stack, trained_mlp: TrainedMLP
) -> None:
    stack = any_backend
    ids = [post_job(stack, trained_mlp.torchscript, QUICK) for _ in range(3)]
    wait_in_append_only_file(stack, ids)
    P.kill(stack.redis)

    refused = submit(stack.client, trained_mlp.torchscript, QUICK)
    assert_problem(refused, 503, "broker_unavailable")
    assert int(refused.headers["retry-after"]) > 0
    assert job_of(stack, ids[0])["id"] == ids[0]  # records are still served
    assert stack.client.get("/v1/jobs").status_code == 200
    assert stack.client.get("/readyz").status_code == 503

    stack.restart_redis()
    for job_id in ids:
        job = wait_for(stack.client, job_id, timeout=120)
        assert (job["status"], job["attempts"]) == ("succeeded", 1), job
    P.wait_until(lambda: stack.client.get("/readyz").status_code == 200, "ready", 30)
    after = wait_for(stack.client, post_job(stack, trained_mlp.torchscript, QUICK))
    assert (after["status"], after["attempts"]) == ("succeeded", 1), after


def test_redis_that_lost_everything_is_reconciled(chaos: Stack, trained_mlp: TrainedMLP) -> None:
    P.stop(chaos.worker)  # nobody consumes: the jobs stay in Redis only
    ids = [post_job(chaos, trained_mlp.torchscript, QUICK) for _ in range(3)]
    chaos.restart_redis(wipe=True)  # the queue is gone
    assert P.redis_ping(chaos.settings.redis_url)
    chaos.worker = chaos.start_worker()  # its janitor re-enqueues the accepted jobs
    for job_id in ids:
        job = wait_for(chaos.client, job_id, timeout=120)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert_succeeded_once(chaos, post_job(chaos, trained_mlp.torchscript, QUICK), attempts=1)


# --- API ------------------------------------------------------------------------------------------


def test_api_restarted_mid_job(chaos: Stack, trained_mlp: TrainedMLP) -> None:
    job_id = post_job(chaos, trained_mlp.torchscript, MID)
    wait_running(chaos, job_id)
    chaos.restart_api()
    assert_succeeded_once(chaos, job_id, attempts=1)
    assert chaos.client.get(f"/v1/jobs/{job_id}/report").status_code == 200


def test_cancel_queued_running_and_finished(chaos: Stack, trained_mlp: TrainedMLP) -> None:
    running = post_job(chaos, trained_mlp.torchscript, LONG)
    wait_running(chaos, running)
    queued = post_job(chaos, trained_mlp.torchscript, QUICK)

    response = chaos.client.post(f"/v1/jobs/{queued}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    response = chaos.client.post(f"/v1/jobs/{running}/cancel")
    assert response.status_code == 202
    assert wait_for(chaos.client, running, timeout=30)["status"] == "cancelled"

    after = post_job(chaos, trained_mlp.torchscript, QUICK)
    assert_succeeded_once(chaos, after, attempts=1)  # the worker was freed
    never = job_of(chaos, queued)
    assert never["status"] == "cancelled" and never["attempts"] == 0, never
    assert never["started_at"] is None
    assert_problem(chaos.client.post(f"/v1/jobs/{after}/cancel"), 409, "job_finished")


def test_idempotency_key(chaos: Stack, trained_mlp: TrainedMLP) -> None:
    key = {"Idempotency-Key": f"chaos-{time.time_ns()}"}
    first = submit(chaos.client, trained_mlp.torchscript, QUICK, headers=key)
    again = submit(chaos.client, trained_mlp.torchscript, QUICK, headers=key)
    assert first.status_code == 202, first.text
    assert again.status_code == 200, again.text  # a replay: the same job, not a new one
    assert again.json()["id"] == first.json()["id"]
    other = submit(chaos.client, trained_mlp.torchscript, {"finetune": {"epochs": 1}},
                   headers=key)
    assert_problem(other, 422, "idempotency_key_reused")

    key = {"Idempotency-Key": f"chaos-concurrent-{time.time_ns()}"}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda _: submit(httpx.Client(base_url=chaos.base_url, timeout=30,
                                          headers=chaos.client.headers),
                             trained_mlp.torchscript, QUICK, headers=key), range(8)))
    # One request made the job (202); the seven others raced it and were replays (200).
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 7 + [202], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    listed = chaos.client.get("/v1/jobs", params={"limit": 200}).json()["data"]
    assert sum(j["id"] == responses[0].json()["id"] for j in listed) == 1
    for job_id in {first.json()["id"], responses[0].json()["id"]}:
        assert wait_for(chaos.client, job_id)["status"] == "succeeded"


# --- limits: their own stack (short wall-clock limit, short retention) ----------------------------


def test_time_limit_and_retention(tmp_path: Path, trained_mlp: TrainedMLP) -> None:
    limits = {"job_soft_time_limit_s": 20, "job_hard_time_limit_s": 21,
              "broker_visibility_timeout_s": 22, "retention_s": 3}
    with start_stack(tmp_path, **limits) as stack:
        slow = post_job(stack, trained_mlp.torchscript, LONG)
        quick = post_job(stack, trained_mlp.torchscript, QUICK)
        job = wait_for(stack.client, slow, timeout=90)
        assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
        assert job["attempts"] == 1  # a timeout is not retried
        assert wait_for(stack.client, quick, timeout=90)["status"] == "succeeded"

        # Retention: files go, the record stays and is listed; report and model answer 410.
        P.wait_until(lambda: job_of(stack, quick)["files_expired_at"] is not None,
                     "retention", timeout=30)
        for path in ("report", "model"):
            assert_problem(stack.client.get(f"/v1/jobs/{quick}/{path}"), 410, "gone")
        assert not (stack.settings.data_dir / "jobs" / quick / "upload").exists()
        listed = stack.client.get("/v1/jobs").json()["data"]
        assert quick in [j["id"] for j in listed]


def small_model() -> bytes:
    """A 784-32-10 MLP as TorchScript: a small upload, a quick job."""
    import io

    import torch
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    buffer = io.BytesIO()
    torch.jit.save(scripting.script(model), buffer)
    return buffer.getvalue()


def test_burst_of_50_submissions(tmp_path: Path) -> None:
    """50 concurrent 0-epoch submissions: each accepted (202) or refused with 429/503, never
    another 5xx; every accepted job reaches a terminal state. The queue limit is low here so
    the refusal path is exercised too and the test stays short."""
    with start_stack(tmp_path, max_queue_depth=10) as stack:
        body = small_model()

        def one(i: int) -> httpx.Response:
            with httpx.Client(base_url=stack.base_url, timeout=60,
                              headers=stack.client.headers) as client:
                return client.post("/v1/jobs", files={"model": ("m.pt", body)},
                                   data={"spec": '{"finetune": {"epochs": 0}}'})

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(one, range(50)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {202, 429, 503}, codes
        ids = [r.json()["id"] for r in responses if r.status_code == 202]
        assert len(ids) >= 10, codes
        assert codes.count(429) >= 1, codes  # the queue limit answered, with Retry-After
        for r in responses:
            if r.status_code != 202:
                assert "retry-after" in r.headers
        finished = [wait_for(stack.client, job_id, timeout=400) for job_id in ids]
        assert [j["status"] for j in finished] == ["succeeded"] * len(ids)
