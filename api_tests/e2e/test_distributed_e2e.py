"""The service on PostgreSQL + S3 as on several hosts: the API and two workers, each with a
data_dir of its own (nothing shared but PostgreSQL, SeaweedFS's S3 and Redis). The reference
job, hostile uploads, a worker SIGKILLed mid-job and a PostgreSQL crash-restart behave as on
the default stack (the Redis kill + restart runs on both, test_chaos.py).

The stack (``dist``, api_tests/e2e/conftest.py) is this module's own (it kills and restarts
processes), on the session's ``postgres_server`` and ``s3_server``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api_tests.security import hostile as h
from api_tests.support.chaos import MID, QUICK, job_of, post_job, wait_gone
from api_tests.support.downloads import check_against_report, download, load_model
from api_tests.support.problems import assert_problem
from api_tests.support.stacks import TrainedMLP, submit, wait_for
from core.storage.postgres import PostgresJobStore
from stack import processes as P
from stack.local import Stack, host_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def records(dist: Stack) -> Iterator[PostgresJobStore]:
    """The job records as a worker host sees them (for the worker holding a job)."""
    store = PostgresJobStore(dist.settings.database_url, pool_max=1)
    yield store
    store.close()


def objects(stack: Stack, job_id: str) -> list[str]:
    from testkit.servers import s3_client

    bucket, prefix = stack.settings.blob_url.removeprefix("s3://").split("/", 1)
    listed = s3_client(stack.settings).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{job_id}/")
    return sorted(o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", ()))


def workers(stack: Stack) -> list[P.Proc]:
    return [stack.worker, *stack.extra]


def assert_succeeded_once(stack: Stack, job_id: str, attempts: int) -> dict[str, Any]:
    job = wait_for(stack.client, job_id, timeout=180)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == attempts
    stored = objects(stack, job_id)
    assert "report.json" in stored and "model.torchscript.pt" in stored, stored
    return job


def test_reference_job_runs_with_nothing_shared(dist: Stack, trained_mlp: TrainedMLP,
                                                mnist_test: tuple[Any, Any]) -> None:
    spec = {"pruning": {"method": "l1_unstructured", "scope": "global", "amount": 0.3},
            "finetune": {"epochs": 1}}
    response = submit(dist.client, trained_mlp.torchscript, spec)
    assert response.status_code == 202, response.text
    job = assert_succeeded_once(dist, response.json()["id"], attempts=1)
    model = load_model(download(dist, job), "torchscript")
    check_against_report(dist, job, model, mnist_test)
    hosts = dist.root / "hosts"
    assert sorted(p.name for p in hosts.iterdir()) == ["api", "w1", "w2"]
    assert not (dist.settings.data_dir / "jobs").exists()  # no shared folder was used
    ready = dist.client.get("/readyz").json()
    assert ready["checks"]["database"] == "ok" and ready["checks"]["objects"] == "ok"


def test_hostile_uploads_refused_as_on_the_default_stack(dist: Stack, tmp_path: Path) -> None:
    canary = h.make_canary(tmp_path)
    door = submit(dist.client, h.shell_pickle_zip(tmp_path, canary),
                  {"architecture": "mnist_mlp", "finetune": {"epochs": 0}})
    assert_problem(door, 422, "invalid_upload")
    response = submit(dist.client, h.torchscript_reads_canary(tmp_path, canary),
                      {"finetune": {"epochs": 0}})
    assert response.status_code == 202, response.text
    job = wait_for(dist.client, response.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "unsafe_model", job
    assert job["attempts"] == 1
    assert canary.read_text() == h.CANARY_TEXT


def _running_on(stack: Stack, records: PostgresJobStore, job_id: str) -> P.Proc:
    """The worker process holding ``job_id`` once it fine-tunes."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = job_of(stack, job_id)
        if job["status"] == "running" and (job.get("progress") or {}).get("phase") == "finetuning":
            record = records.get(job_id)
            assert record is not None
            holders = [p for p in workers(stack) if p.meta["hostname"] == record.worker]
            assert len(holders) == 1, (record.worker, [p.meta for p in workers(stack)])
            return holders[0]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never ran: {stack.logs()}")


def job_files_on(host_dir: Path, job_id: str) -> list[str]:
    """Every file or folder of ``job_id`` on one host's data dir (scratch, blob cache)."""
    return sorted(str(p) for p in host_dir.rglob("*") if job_id in p.name)


def test_worker_sigkill_mid_job_is_rerun_by_the_other_host(
    dist: Stack, records: PostgresJobStore, trained_mlp: TrainedMLP
) -> None:
    """The job reruns on the other host; the killed worker's copies of it (its job
    process's scratch folder, the cached upload) are removed by the janitor of the worker
    restarted on that host, on its first pass."""
    job_id = post_job(dist, trained_mlp.torchscript, MID)
    victim = _running_on(dist, records, job_id)
    name = victim.meta["hostname"].split("@", 1)[0]
    host_dir = dist.root / "hosts" / name
    left = job_files_on(host_dir, job_id)
    assert any("scratch" in p for p in left) and any("blob-cache" in p for p in left), left
    children = P.children_of(victim.pid)
    P.kill(victim)  # the job process dies with it: both killed mid-job
    wait_gone(children)
    # The other worker's janitor re-queues the job once its lease expires; it reruns there.
    assert_succeeded_once(dist, job_id, attempts=2)
    assert job_files_on(host_dir, job_id) != []  # nothing on that host cleaned up yet
    replacement = P.start_worker(host_env(dist.settings, dist.root, name, own_dirs=True), name,
                                 dist.settings.queue_name, dist.log_dir)
    P.wait_until_ready(replacement, timeout=90)
    P.wait_until(lambda: job_files_on(host_dir, job_id) == [], "the copies removed", 30,
                 replacement)
    if victim is dist.worker:
        dist.worker = replacement
    else:
        dist.extra[dist.extra.index(victim)] = replacement


def test_postgres_crash_restart_mid_job_loses_nothing(
    dist: Stack, records: PostgresJobStore, postgres_server: Any, trained_mlp: TrainedMLP
) -> None:
    running = post_job(dist, trained_mlp.torchscript, MID)
    _running_on(dist, records, running)
    queued = post_job(dist, trained_mlp.torchscript, QUICK)
    postgres_server.restart_immediate()
    # Right after the restart every answer is an answer: 200, or 503 + Retry-After.
    statuses = set()
    for _ in range(20):
        response = dist.client.get(f"/v1/jobs/{running}")
        statuses.add(response.status_code)
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) > 0
    assert statuses <= {200, 503}, statuses
    assert_succeeded_once(dist, running, attempts=1)
    assert_succeeded_once(dist, queued, attempts=1)
    after = post_job(dist, trained_mlp.torchscript, QUICK)
    assert_succeeded_once(dist, after, attempts=1)
