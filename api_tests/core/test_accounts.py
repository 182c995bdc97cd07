"""Tenants, API keys and webhook deliveries in the job store's database, on every backend
(the ``BACKENDS`` of store_backends.py): ``AccountStore`` (authenticate: ok, wrong
secret, revoked, unknown, malformed; ``last_used`` written at most once a minute; only a
peppered digest stored) and ``DeliveryStore`` (one delivery per job, leases by
compare-and-set, attempts recorded), and the plain functions beside them (key format,
scopes, backoff bounds)."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta

import pytest

from api_tests.core.factories import T0, make_record
from core.jobs.record import JobRecord, JobStatus
from core.storage.protocols import JobStore
from core.storage.sql import SqlAccess, SqlConn
from core.tenants.accounts import (
    ALL_SCOPES,
    KEY_PREFIX,
    Notify,
    Scope,
    TenantLimits,
    grants,
    key_digest,
    key_id_of,
    new_key,
    parse_scopes,
)
from core.tenants.store import LAST_USED_EVERY_US, AccountStore, TenantExists, UnknownTenant
from core.webhooks.deliveries import (
    ATTEMPT_LEASE_US,
    MAX_ATTEMPTS_KEPT,
    Attempt,
    DeliveryState,
    DeliveryStore,
    backoff_s,
)

PEPPER = "test-pepper"
HOOK = Notify(url="https://hooks.example.com/pruner")


class CountingSql:
    """The store's ``SqlAccess``, counting write transactions."""

    def __init__(self, inner: SqlAccess) -> None:
        self.inner = inner
        self.writes = 0

    def write(self) -> AbstractContextManager[SqlConn]:
        self.writes += 1
        return self.inner.write()

    def read(self) -> AbstractContextManager[SqlConn]:
        return self.inner.read()


@pytest.fixture()
def sql(store: JobStore) -> CountingSql:
    return CountingSql(store.sql())


@pytest.fixture()
def accounts(sql: CountingSql) -> AccountStore:
    return AccountStore(sql)


# --- tenants -------------------------------------------------------------------------------


def test_tenants_round_trip(accounts: AccountStore) -> None:
    made = accounts.create_tenant("vision", T0, TenantLimits(max_queued=5), HOOK)
    assert made.signing_secret.startswith("whsec_")
    assert accounts.get_tenant("vision") == made
    assert accounts.get_tenant("nobody") is None
    with pytest.raises(TenantExists):
        accounts.create_tenant("vision", T0)
    assert accounts.create_tenant("vision", T0, exist_ok=True) == made  # the one stored
    for bad in ("Vision", "-x", "a b", "a/b", "x" * 64, ""):
        with pytest.raises(ValueError):
            accounts.create_tenant(bad, T0)
    accounts.create_tenant("audio", T0)
    assert [t.name for t in accounts.list_tenants()] == ["audio", "vision"]


def test_update_tenant_merges_limits_and_rotates_secrets(accounts: AccountStore) -> None:
    accounts.create_tenant("vision", T0, TenantLimits(max_queued=5, max_running=2))
    updated = accounts.update_tenant("vision", limits=TenantLimits(submissions_per_minute=7))
    assert updated.limits == TenantLimits(max_queued=5, max_running=2, submissions_per_minute=7)
    cleared = accounts.update_tenant("vision", limits=TenantLimits(max_queued=None))
    assert cleared.limits == TenantLimits(max_running=2, submissions_per_minute=7)
    assert accounts.update_tenant("vision", notify=HOOK).notify == HOOK
    assert accounts.update_tenant("vision", clear_notify=True).notify is None
    assert accounts.get_tenant("vision") == cleared.model_copy(update={"notify": None})
    before = cleared.signing_secret
    rotated = accounts.rotate_signing_secret("vision")
    assert rotated.signing_secret != before and rotated.signing_secret.startswith("whsec_")
    assert accounts.get_tenant("vision") == rotated
    with pytest.raises(UnknownTenant):
        accounts.update_tenant("nobody", limits=TenantLimits())
    with pytest.raises(UnknownTenant):
        accounts.rotate_signing_secret("nobody")
    accounts.create_tenant("audio", T0)
    assert accounts.limits_of(["vision", "audio", "nobody"]) == {
        "vision": TenantLimits(max_running=2, submissions_per_minute=7),
        "audio": TenantLimits()}
    assert accounts.limits_of([]) == {}


# --- keys ----------------------------------------------------------------------------------


def test_create_list_get_and_revoke_keys(accounts: AccountStore) -> None:
    accounts.create_tenant("vision", T0)
    accounts.create_tenant("audio", T0)
    made = accounts.create_key("vision", [Scope.JOBS_WRITE, Scope.JOBS_READ], PEPPER, T0,
                               name="ci")
    other = accounts.create_key("audio", [Scope.ADMIN], PEPPER, T0 + timedelta(seconds=1))
    assert key_id_of(made.key) == made.info.key_id
    assert made.info.prefix == KEY_PREFIX + made.info.key_id
    assert made.info.scopes == [Scope.JOBS_READ, Scope.JOBS_WRITE] and made.info.name == "ci"
    assert accounts.get_key(made.info.key_id) == made.info
    assert accounts.list_keys() == [made.info, other.info]
    assert accounts.list_keys("audio") == [other.info]
    assert accounts.list_keys("nobody") == []
    assert "key" not in made.info.model_dump() and made.key not in repr(made)
    with pytest.raises(UnknownTenant):
        accounts.create_key("nobody", [Scope.JOBS_READ], PEPPER, T0)
    with pytest.raises(ValueError):
        accounts.create_key("vision", [], PEPPER, T0)
    revoked = accounts.revoke_key(made.info.key_id, T0 + timedelta(hours=1))
    assert revoked is not None and revoked.revoked_at == T0 + timedelta(hours=1)
    again = accounts.revoke_key(made.info.key_id, T0 + timedelta(hours=2))
    assert again is not None and again.revoked_at == T0 + timedelta(hours=1)  # the first
    assert accounts.revoke_key("0123456789ab", T0) is None
    assert accounts.get_key(other.info.key_id) == other.info


def _another_secret(key: str) -> str:
    last = "A" if key[-1] != "A" else "B"
    return key[:-1] + last


def test_authenticate(accounts: AccountStore) -> None:
    accounts.create_tenant("vision", T0)
    made = accounts.create_key("vision", [Scope.JOBS_READ], PEPPER, T0)
    doomed = accounts.create_key("vision", [Scope.ADMIN], PEPPER, T0)
    now = T0 + timedelta(seconds=5)
    found = accounts.authenticate(made.key, PEPPER)
    assert found is not None and found.key_id == made.info.key_id
    assert (found.tenant, found.scopes) == ("vision", [Scope.JOBS_READ])
    assert accounts.authenticate(_another_secret(made.key), PEPPER) is None  # wrong secret
    assert accounts.authenticate(made.key, "another pepper") is None
    unknown = f"{KEY_PREFIX}{'f' * 12}_{made.key.split('_', 3)[3]}"
    assert key_id_of(unknown) is not None
    assert accounts.authenticate(unknown, PEPPER) is None  # well-formed, never issued
    for malformed in ("", "not-a-key", made.key + "x", made.key[:-1], made.key.upper(),
                      " " + made.key, made.key.replace("prn_live_", "prn_test_")):
        assert key_id_of(malformed) is None
        assert accounts.authenticate(malformed, PEPPER) is None
    assert accounts.authenticate(doomed.key, PEPPER) is not None
    accounts.revoke_key(doomed.info.key_id, now)
    assert accounts.authenticate(doomed.key, PEPPER) is None  # revoked: from now on
    assert accounts.authenticate(made.key, PEPPER) is not None  # the others stay


def last_used(accounts: AccountStore, key_id: str) -> object:
    key = accounts.get_key(key_id)
    assert key is not None
    return key.last_used_at


def test_authenticate_writes_nothing_and_last_used_is_due_once_a_minute(
    accounts: AccountStore, sql: CountingSql,
) -> None:
    """The hot path only reads; ``needs_touch`` says when ``last_used`` is a minute old, and
    ``touch`` (the API's one write, off its event loop) records it."""
    accounts.create_tenant("vision", T0)
    made = accounts.create_key("vision", [Scope.JOBS_READ], PEPPER, T0)
    key_id = made.info.key_id
    writes = sql.writes
    for _ in range(50):
        found = accounts.authenticate(made.key, PEPPER)
        assert found is not None and found.last_used_at is None
    accounts.authenticate(_another_secret(made.key), PEPPER)
    accounts.authenticate("not-a-key", PEPPER)
    assert sql.writes == writes  # authenticating never writes
    assert accounts.needs_touch(found, T0)  # never used: due at once
    first = T0 + timedelta(seconds=1)
    accounts.touch(key_id, first)
    assert sql.writes == writes + 1
    key = accounts.authenticate(made.key, PEPPER)
    assert key is not None and key.last_used_at == first == last_used(accounts, key_id)
    every = timedelta(microseconds=LAST_USED_EVERY_US)
    assert every == timedelta(minutes=1)
    assert not any(accounts.needs_touch(key, first + every * i / 100) for i in range(100))
    assert not accounts.needs_touch(key, first + every - timedelta(microseconds=1))
    assert accounts.needs_touch(key, first + every)
    accounts.touch(key_id, first + every)
    assert last_used(accounts, key_id) == first + every


def test_only_a_peppered_digest_of_the_key_is_stored(accounts: AccountStore,
                                                     sql: CountingSql) -> None:
    accounts.create_tenant("vision", T0)
    made = accounts.create_key("vision", [Scope.JOBS_READ], PEPPER, T0)
    secret = made.key.split("_", 3)[3]
    with sql.read() as conn:
        row = conn.execute("SELECT * FROM api_keys WHERE key_id = ?",
                           (made.info.key_id,)).fetchone()
        (digest,) = conn.execute("SELECT digest FROM api_keys WHERE key_id = ?",
                                 (made.info.key_id,)).fetchone()
    assert digest != made.key and len(digest) == 64
    assert digest == key_digest(PEPPER, made.key) != key_digest("other", made.key)
    for value in row:
        assert made.key not in str(value) and secret not in str(value)


# --- key format and scopes -----------------------------------------------------------------


def test_new_keys_have_the_documented_form() -> None:
    keys = [new_key() for _ in range(50)]
    for key, key_id in keys:
        assert key_id_of(key) == key_id and len(key_id) == 12
        assert key.startswith(f"{KEY_PREFIX}{key_id}_") and len(key) == 9 + 12 + 1 + 43
    assert len({k for k, _ in keys}) == len({i for _, i in keys}) == 50


def test_scopes() -> None:
    assert parse_scopes(" jobs:write , jobs:read ") == {Scope.JOBS_READ, Scope.JOBS_WRITE}
    for bad in ("", ",", "jobs:delete", "jobs:read,root"):
        with pytest.raises(ValueError):
            parse_scopes(bad)
    assert grants(frozenset({Scope.ADMIN}), Scope.JOBS_WRITE)
    assert grants(frozenset({Scope.ADMIN}), Scope.JOBS_READ)
    assert not grants(frozenset({Scope.JOBS_READ}), Scope.JOBS_WRITE)
    assert not grants(frozenset({Scope.JOBS_READ, Scope.JOBS_WRITE}), Scope.ADMIN)
    assert ALL_SCOPES == frozenset(Scope)


# --- deliveries ----------------------------------------------------------------------------


def finished(store: JobStore, tenant: str = "vision",
             status: JobStatus = JobStatus.SUCCEEDED) -> JobRecord:
    record = make_record(T0, tenant=tenant, status=status, finished_at=T0, notify=HOOK)
    store.create(record)
    return record


def test_notify_due_lists_terminal_jobs_not_yet_notified(store: JobStore) -> None:
    done = finished(store)
    store.create(make_record(T0, notify=HOOK))  # queued: not due
    store.create(make_record(T0, status=JobStatus.FAILED, finished_at=T0))  # no webhook
    assert [r.id for r in store.notify_due()] == [done.id]
    store.update(done.id, notified=True)
    assert store.notify_due() == []
    running = make_record(T0, status=JobStatus.RUNNING, notify=HOOK)
    store.create(running)
    store.transition(running.id, {JobStatus.RUNNING}, JobStatus.CANCELLED, finished_at=T0)
    assert [r.id for r in store.notify_due()] == [running.id]


def test_a_job_gets_one_delivery_however_often_it_is_added(store: JobStore) -> None:
    deliveries = DeliveryStore(store.sql())
    record = finished(store)
    wins: list[bool] = []
    barrier = threading.Barrier(6)

    def add() -> None:
        barrier.wait()
        wins.append(deliveries.add(record, HOOK.url, T0))

    threads = [threading.Thread(target=add) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 5 + [True]
    assert deliveries.add(record, HOOK.url, T0 + timedelta(hours=1)) is False
    (delivery,) = deliveries.for_job(record.id)
    assert delivery.id.startswith("msg_") and delivery.job_id == record.id
    assert (delivery.tenant, delivery.event, delivery.url) == ("vision", "succeeded", HOOK.url)
    assert delivery.state is DeliveryState.PENDING and delivery.attempts == []
    assert delivery.created_at == delivery.next_attempt_at == T0
    assert deliveries.for_job("other") == []


def test_due_and_leases_are_compare_and_set(store: JobStore) -> None:
    deliveries = DeliveryStore(store.sql())
    record = finished(store)
    deliveries.add(record, HOOK.url, T0)
    assert deliveries.due(T0 - timedelta(microseconds=1)) == []
    ((delivery, body, token),) = deliveries.due(T0)
    event = json.loads(body)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == record.id
    # Two dispatchers take the same due row: exactly one wins it.
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def lease() -> None:
        barrier.wait()
        results.append(deliveries.lease(delivery.id, token, T0))

    threads = [threading.Thread(target=lease) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert deliveries.lease(delivery.id, token, T0) is False  # the token is spent
    lease_ends = T0 + timedelta(microseconds=ATTEMPT_LEASE_US)
    assert deliveries.due(lease_ends - timedelta(microseconds=1)) == []
    # A dispatcher that died mid-attempt: the lease expires and the row is due again.
    ((again, _, new_token),) = deliveries.due(lease_ends)
    assert again.id == delivery.id and new_token != token
    assert deliveries.lease(delivery.id, new_token, lease_ends) is True


def test_record_attempt(store: JobStore) -> None:
    deliveries = DeliveryStore(store.sql())
    record = finished(store, status=JobStatus.FAILED)
    deliveries.add(record, HOOK.url, T0)
    ((delivery, _, token),) = deliveries.due(T0)
    assert delivery.event == "failed"
    assert deliveries.lease(delivery.id, token, T0)
    retry_at = T0 + timedelta(seconds=10)
    failed = Attempt(at=T0, status_code=500, error="HTTP 500", duration_ms=12.5)
    deliveries.record_attempt(delivery.id, failed, DeliveryState.PENDING, retry_at)
    (pending,) = deliveries.for_job(record.id)
    assert pending.state is DeliveryState.PENDING and pending.next_attempt_at == retry_at
    assert pending.attempts == [failed]
    assert deliveries.due(retry_at - timedelta(microseconds=1)) == []
    ((_, _, token),) = deliveries.due(retry_at)
    assert deliveries.lease(delivery.id, token, retry_at)
    ok = Attempt(at=retry_at, status_code=204, duration_ms=3.0)
    deliveries.record_attempt(delivery.id, ok, DeliveryState.DELIVERED, None)
    (done,) = deliveries.for_job(record.id)
    assert done.state is DeliveryState.DELIVERED and done.next_attempt_at is None
    assert done.attempts == [failed, ok]
    assert deliveries.due(T0 + timedelta(days=30)) == []
    deliveries.record_attempt("msg_nope", ok, DeliveryState.DELIVERED, None)  # no such row


def test_attempts_kept_are_bounded(store: JobStore) -> None:
    deliveries = DeliveryStore(store.sql())
    record = finished(store)
    deliveries.add(record, HOOK.url, T0)
    (delivery,) = deliveries.for_job(record.id)
    for i in range(MAX_ATTEMPTS_KEPT + 5):
        attempt = Attempt(at=T0 + timedelta(minutes=i), status_code=None, error="refused",
                          duration_ms=1.0)
        last = i == MAX_ATTEMPTS_KEPT + 4
        deliveries.record_attempt(delivery.id, attempt,
                                  DeliveryState.FAILED if last else DeliveryState.PENDING,
                                  None if last else T0 + timedelta(minutes=i + 1))
    (gave_up,) = deliveries.for_job(record.id)
    assert gave_up.state is DeliveryState.FAILED and gave_up.next_attempt_at is None
    assert len(gave_up.attempts) == MAX_ATTEMPTS_KEPT
    assert gave_up.attempts[0].at == T0 + timedelta(minutes=5)  # the newest are kept
    assert gave_up.attempts[-1].at == T0 + timedelta(minutes=MAX_ATTEMPTS_KEPT + 4)


# --- backoff -------------------------------------------------------------------------------


class Edge(random.Random):
    """A "random" factor pinned to one end of its range."""

    def __init__(self, pick: Callable[[float, float], float]) -> None:
        super().__init__(0)
        self.pick = pick

    def uniform(self, a: float, b: float) -> float:
        return self.pick(a, b)


def test_backoff_doubles_up_to_its_cap_with_jitter_below_it() -> None:
    high, low = Edge(lambda a, b: b), Edge(lambda a, b: a)
    assert [backoff_s(n, 10.0, 3600.0, high) for n in range(1, 11)] == [
        10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0, 3600.0]
    assert backoff_s(1, 10.0, 3600.0, low) == 5.0
    assert backoff_s(60, 10.0, 3600.0, low) == 1800.0
    # The dispatcher counts failures from the attempts it keeps: never past this.
    assert backoff_s(MAX_ATTEMPTS_KEPT + 1, 1e-9, 3600.0, high) == 3600.0
    rng = random.Random(7)
    for n in range(1, 40):
        cap = min(3600.0, 10.0 * 2 ** (n - 1))
        samples = [backoff_s(n, 10.0, 3600.0, rng) for _ in range(50)]
        assert all(cap / 2 <= s <= cap for s in samples), (n, samples)
        assert len(set(samples)) > 1  # jittered
