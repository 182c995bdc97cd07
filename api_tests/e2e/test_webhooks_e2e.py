"""Signed webhooks end to end: a real job on the real stack notifies a receiver on 127.0.0.1
that fails twice first; a receiver that is down while the job ends still gets the delivery
after the API and the worker restart (the rows are durable, not in memory)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api_tests.e2e.stack_command import random_mlp
from api_tests.support.stacks import start_stack, submit, wait_for
from api_tests.webhook_receiver import WebhookReceiver
from client.webhooks import verify
from stack import processes as P
from stack.local import Stack

pytestmark = pytest.mark.e2e

WEBHOOKS = {"webhook_allow_hosts": "127.0.0.1", "webhook_retry_base_s": 0.3,
            "webhook_retry_max_s": 1.0, "webhook_interval_s": 0.2}


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_mlp(tmp_path_factory.mktemp("webhooks") / "mlp.state_dict.pt")


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[Stack]:
    with start_stack(tmp_path, **WEBHOOKS) as running:
        yield running


def quick_job(stack: Stack, mlp: Path, url: str) -> str:
    spec = {"architecture": "mnist_mlp", "finetune": {"epochs": 0}, "notify": {"url": url}}
    response = submit(stack.client, mlp, spec)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def deliveries(stack: Stack, job_id: str) -> dict[str, Any]:
    response = stack.client.get(f"/v1/jobs/{job_id}/deliveries")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def signing_secret(stack: Stack) -> str:
    """The ``local`` tenant's secret (rotating is the admin API's one way to read it)."""
    response = stack.client.post("/v1/admin/tenants/local/signing-secret")
    assert response.status_code == 200, response.text
    secret: str = response.json()["signing_secret"]
    return secret


def wait_delivered(stack: Stack, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = deliveries(stack, job_id)
        if shown["data"] and shown["data"][0]["state"] != "pending":
            return shown
        time.sleep(0.1)
    raise AssertionError(f"no delivery of {job_id} ended: {shown}\n{stack.logs()}")


def test_a_job_notifies_a_flaky_receiver_until_it_answers_2xx(hooked: Stack,
                                                               mlp: Path) -> None:
    secret = signing_secret(hooked)
    with WebhookReceiver([500, 500, 200]) as receiver:
        job_id = quick_job(hooked, mlp, receiver.url)
        job = wait_for(hooked.client, job_id, timeout=60)
        assert job["status"] == "succeeded", job
        shown = wait_delivered(hooked, job_id)
        received = receiver.wait_for(3)
    assert shown["notify"]["url"] == receiver.url
    (delivery,) = shown["data"]
    assert delivery["state"] == "delivered" and delivery["next_attempt_at"] is None
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in received} == {delivery["id"]}
    for one in received:
        verify(secret, one.headers, one.body)
    event = json.loads(received[-1].body)
    assert (event["type"], event["data"]["id"]) == ("job.succeeded", job_id)
    assert event["data"]["model_sha256"] == job["model"]["sha256"]


def test_a_delivery_survives_a_receiver_outage_and_restarts(hooked: Stack,
                                                             mlp: Path) -> None:
    port = P.free_port()  # nothing listens there until the end
    url = f"http://127.0.0.1:{port}/hook"
    job_id = quick_job(hooked, mlp, url)
    assert wait_for(hooked.client, job_id, timeout=60)["status"] == "succeeded"
    _wait_failed_attempts(hooked, job_id, 2)  # refused connections, retried

    # Rotated while the receiver is down: the restarted worker must sign with the new one
    # (rotating with the receiver up would race an attempt already signed with the old).
    secret = signing_secret(hooked)
    hooked.restart_api()
    hooked.restart_worker()
    with WebhookReceiver([204], port=port) as receiver:
        shown = wait_delivered(hooked, job_id)
        (received,) = receiver.wait_for(1)
    (delivery,) = shown["data"]
    assert delivery["state"] == "delivered"
    *failed, last = delivery["attempts"]
    assert len(failed) >= 2 and {a["status_code"] for a in failed} == {None}
    assert all(a["error"].startswith("ConnectError") for a in failed), failed
    assert last["status_code"] == 204
    assert received.headers["webhook-id"] == delivery["id"]
    verify(secret, received.headers, received.body)
    assert json.loads(received.body)["data"]["id"] == job_id


def _wait_failed_attempts(stack: Stack, job_id: str, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = deliveries(stack, job_id)["data"]
        if data and len(data[0]["attempts"]) >= count:
            assert data[0]["state"] == "pending", data
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} attempts for {job_id}\n{stack.logs()}")
