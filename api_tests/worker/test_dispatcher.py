"""The webhook dispatcher's passes (worker/notify/dispatcher.py) over a real SQLite store and a
real receiver on 127.0.0.1, with no worker process: retries until a 2xx with one webhook-id
and a signature that verifies, the events filter, the tenant's default webhook, refused
destinations, giving up, and two dispatchers racing for one due row."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from api_tests.core.factories import make_record
from api_tests.webhook_receiver import Received, WebhookReceiver
from client.webhooks import verify
from core.jobs.lifecycle import utcnow
from core.jobs.record import JobRecord, JobStatus
from core.settings import Settings
from core.storage.backends import open_job_store
from core.storage.protocols import JobStore
from core.tenants import tenancy
from core.tenants.accounts import Notify, Scope, Tenant
from core.webhooks.deliveries import Delivery, DeliveryState
from stack import processes as P
from worker.notify.dispatcher import Dispatcher, start_dispatcher, stop_dispatcher

FAST = {"webhook_allow_hosts": "127.0.0.1", "webhook_retry_base_s": 0.05,
        "webhook_retry_max_s": 0.2, "webhook_timeout_s": 2.0}


def settings_in(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings.of(data_dir=tmp_path / "data", **{**FAST, **overrides})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    opened = open_job_store(settings_in(tmp_path))
    yield opened
    opened.close()


@pytest.fixture
def tenant(store: JobStore) -> Tenant:
    return tenancy.accounts(store).create_tenant("acme", utcnow())


def finished_job(store: JobStore, url: str, status: JobStatus = JobStatus.SUCCEEDED,
                 events: list[str] | None = None, tenant: str = "acme") -> JobRecord:
    notify = Notify(url=url) if events is None else Notify.model_validate(
        {"url": url, "events": events})
    now = utcnow()
    record = make_record(created_at=now - timedelta(seconds=5), tenant=tenant, notify=notify,
                         status=status, started_at=now - timedelta(seconds=4), finished_at=now)
    store.create(record)
    return record


def dispatch_until(dispatcher: Dispatcher, store: JobStore, job_id: str,
                   done: Callable[[Delivery], bool], timeout: float = 10.0) -> Delivery:
    """Run passes until the job's delivery satisfies ``done`` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dispatcher.run_once()
        found = tenancy.deliveries(store).for_job(job_id)
        if found and done(found[0]):
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"delivery of {job_id} not done after {timeout} s: "
                         f"{tenancy.deliveries(store).for_job(job_id)}")


def ended(delivery: Delivery) -> bool:
    return delivery.state is not DeliveryState.PENDING


def test_retries_until_2xx_with_one_id_and_valid_signatures(
        tmp_path: Path, store: JobStore, tenant: Tenant) -> None:
    with WebhookReceiver([500, 500, 200]) as receiver:
        record = finished_job(store, receiver.url)
        delivery = dispatch_until(Dispatcher(settings_in(tmp_path), store), store, record.id,
                                  ended)
        assert delivery.state is DeliveryState.DELIVERED
        assert [a.status_code for a in delivery.attempts] == [500, 500, 200]
        assert [a.error for a in delivery.attempts] == ["HTTP 500", "HTTP 500", None]
        assert delivery.next_attempt_at is None
        assert (delivery.job_id, delivery.tenant, delivery.event, delivery.url) == \
            (record.id, "acme", "succeeded", receiver.url)
        assert len(receiver.received) == 3
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert ids == {delivery.id}  # the same message on every retry: receivers dedupe on it
    for received in receiver.received:
        verify(tenant.signing_secret, received.headers, received.body)
        assert received.headers["content-type"] == "application/json"
    body = json.loads(receiver.received[-1].body)
    assert body["type"] == "job.succeeded"
    assert body["data"]["id"] == record.id and body["data"]["status"] == "succeeded"
    assert body["data"]["links"]["self"] == f"/v1/jobs/{record.id}"
    assert {r.body for r in receiver.received} == {receiver.received[0].body}  # same bytes
    stored = store.get(record.id)
    assert stored is not None and stored.notified
    assert store.notify_due() == []


def test_a_status_outside_the_events_is_not_delivered_but_marked_notified(
        tmp_path: Path, store: JobStore, tenant: Tenant) -> None:
    with WebhookReceiver([204]) as receiver:
        record = finished_job(store, receiver.url, JobStatus.FAILED, events=["succeeded"])
        assert [r.id for r in store.notify_due()] == [record.id]
        assert Dispatcher(settings_in(tmp_path), store).run_once() == 0
        assert tenancy.deliveries(store).for_job(record.id) == []
        stored = store.get(record.id)
        assert stored is not None and stored.notified
        assert store.notify_due() == []
        assert receiver.connections == 0


def test_a_job_without_notify_is_never_due(tmp_path: Path, store: JobStore,
                                           tenant: Tenant) -> None:
    record = make_record(tenant="acme", status=JobStatus.SUCCEEDED, finished_at=utcnow())
    store.create(record)
    assert store.notify_due() == []
    assert Dispatcher(settings_in(tmp_path), store).run_once() == 0
    assert tenancy.deliveries(store).for_job(record.id) == []


@pytest.mark.parametrize(("allow", "host"), [
    ("", "127.0.0.1"),  # loopback, not allow-listed
    ("127.0.0.1", "localhost"),  # the allow-list names the address, not this name
])
def test_a_refused_destination_fails_at_once_without_connecting(
        tmp_path: Path, store: JobStore, tenant: Tenant, allow: str, host: str) -> None:
    with WebhookReceiver([204]) as receiver:
        record = finished_job(store, f"https://{host}:{receiver.port}/hook")
        dispatcher = Dispatcher(settings_in(tmp_path, webhook_allow_hosts=allow), store)
        assert dispatcher.run_once() == 1
        (delivery,) = tenancy.deliveries(store).for_job(record.id)
        assert delivery.state is DeliveryState.FAILED and delivery.next_attempt_at is None
        (attempt,) = delivery.attempts
        assert attempt.status_code is None
        assert attempt.error is not None and attempt.error.startswith("refused: "), attempt
        assert "loopback" in attempt.error
        assert dispatcher.run_once() == 0  # never retried: it would be refused again
        assert receiver.connections == 0 and receiver.received == []


def test_gives_up_after_webhook_give_up_s(tmp_path: Path, store: JobStore,
                                          tenant: Tenant) -> None:
    give_up_s = 0.5
    with WebhookReceiver([503]) as receiver:
        record = finished_job(store, receiver.url)
        dispatcher = Dispatcher(settings_in(tmp_path, webhook_give_up_s=give_up_s), store)
        delivery = dispatch_until(dispatcher, store, record.id, ended)
        assert delivery.state is DeliveryState.FAILED and delivery.next_attempt_at is None
        assert len(delivery.attempts) >= 2  # it did retry, with backoff, before giving up
        assert {a.status_code for a in delivery.attempts} == {503}
        # No attempt starts after the give-up time (``at`` is when an attempt ended; the
        # slack covers this loop's own pace).
        latest_start = delivery.created_at + timedelta(seconds=give_up_s + 0.25)
        assert all(a.at - timedelta(milliseconds=a.duration_ms) <= latest_start
                   for a in delivery.attempts), delivery.attempts
        sent = len(receiver.received)
        assert sent == len(delivery.attempts)
        time.sleep(0.3)
        assert dispatcher.run_once() == 0
        assert len(receiver.received) == sent


def test_two_dispatchers_racing_for_one_due_row_make_one_attempt(
        tmp_path: Path, store: JobStore, tenant: Tenant) -> None:
    settings = settings_in(tmp_path)
    other_store = open_job_store(settings)  # another worker: its own connections
    try:
        with WebhookReceiver([204]) as receiver:
            record = finished_job(store, receiver.url)
            first, second = Dispatcher(settings, store), Dispatcher(settings, other_store)
            first.record_due_events()
            second.record_due_events()  # a second insert for the job is a no-op
            assert len(tenancy.deliveries(store).for_job(record.id)) == 1
            # Both read the row as due (the same lease token) before either leases it.
            both_read = threading.Barrier(2, timeout=5)
            for dispatcher in (first, second):
                _pause_after_due(dispatcher, both_read)
            made: list[int] = []
            threads = [threading.Thread(target=lambda d=d: made.append(d.run_once()))
                       for d in (first, second)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert sorted(made) == [0, 1]
            (delivery,) = tenancy.deliveries(store).for_job(record.id)
            assert delivery.state is DeliveryState.DELIVERED
            assert len(delivery.attempts) == 1
            assert len(receiver.received) == 1
    finally:
        other_store.close()


def _pause_after_due(dispatcher: Dispatcher, barrier: threading.Barrier) -> None:
    read_due = dispatcher.deliveries.due

    def due(*args: Any, **kwargs: Any) -> Any:
        rows = read_due(*args, **kwargs)
        barrier.wait()
        return rows

    dispatcher.deliveries.due = due  # type: ignore[method-assign]


class SlowReceiver(WebhookReceiver):
    def record(self, received: Received) -> int:
        status = super().record(received)
        time.sleep(0.5)  # the answer comes while the worker is stopping
        return status


def test_stopping_the_thread_lets_the_attempt_in_flight_be_recorded(
        tmp_path: Path, store: JobStore, tenant: Tenant) -> None:
    settings = settings_in(tmp_path, webhook_interval_s=0.05)
    with SlowReceiver([204]) as receiver:
        record = finished_job(store, receiver.url)
        start_dispatcher(settings, store)
        try:
            receiver.wait_for(1, timeout=10)
        finally:
            stop_dispatcher()  # as the worker's shutdown does, the process exiting next
        (delivery,) = tenancy.deliveries(store).for_job(record.id)
        # Not left leased (it would be sent again in a minute): recorded as it ended.
        assert delivery.state is DeliveryState.DELIVERED
        assert [a.status_code for a in delivery.attempts] == [204]


# --- the tenant's default webhook, through a real submission ---------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with P.running_redis(tmp_path_factory.mktemp("dispatch-redis")) as proc:
        yield proc.meta["url"]


def _weights(path: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"fc.weight": np.ones((4, 4), dtype=np.float32)}, str(path))
    return path


def test_the_tenants_default_webhook_is_used_unless_the_spec_has_one(
        tmp_path: Path, redis_url: str) -> None:
    from api_tests.support.api import REFERENCE, make_settings, running_api

    settings = make_settings(tmp_path, redis_url, **FAST)
    model = _weights(tmp_path / "w.safetensors")
    with WebhookReceiver([204]) as default, WebhookReceiver([204]) as own, \
            running_api(settings) as api:
        accounts = tenancy.accounts(api.store)
        tenant = accounts.create_tenant("acme", utcnow(), notify=Notify(url=default.url))
        key = accounts.create_key("acme", {Scope.JOBS_READ, Scope.JOBS_WRITE},
                                  tenancy.auth_pepper(settings), utcnow()).key
        as_acme = {"Authorization": f"Bearer {key}"}
        job_ids = []
        for spec in (REFERENCE, {**REFERENCE, "notify": {"url": own.url}}):
            response = api.submit(model, spec, headers=as_acme)
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
            # What the worker would do: the job ends.
            assert api.store.transition(job_ids[-1], {JobStatus.QUEUED}, JobStatus.SUCCEEDED,
                                        started_at=utcnow(), finished_at=utcnow())
        dispatcher = Dispatcher(settings, api.store)
        for job_id in job_ids:
            dispatch_until(dispatcher, api.store, job_id, ended)
        (to_default,), (to_own,) = default.wait_for(1), own.wait_for(1)
        for received, job_id in ((to_default, job_ids[0]), (to_own, job_ids[1])):
            verify(tenant.signing_secret, received.headers, received.body)
            assert json.loads(received.body)["data"]["id"] == job_id
        shown = api.client.get(f"/v1/jobs/{job_ids[0]}/deliveries", headers=as_acme)
        assert shown.status_code == 200, shown.text
        assert shown.json()["notify"]["url"] == default.url
        assert [d["state"] for d in shown.json()["data"]] == ["delivered"]
