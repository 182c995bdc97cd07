"""The tenant side of the ``JobStore`` contract, on every backend (the ``BACKENDS`` of
store_backends.py): reads filtered by tenant, idempotency keys scoped per tenant, quotas
exact at their boundaries, fair scheduling across tenants and the running limit, and the
metrics' bounded per-tenant counts."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from api_tests.core.factories import T0, make_record
from core.jobs.lifecycle import claim, claim_next
from core.jobs.record import JobStatus
from core.settings import Settings
from core.storage.protocols import IdempotencyConflict, JobStore
from core.tenants import tenancy
from core.tenants.accounts import TenantLimits
from core.tenants.quotas import Quota, QuotaExceeded, QuotaKind, RunningLimits
from core.tenants.scheduling import MAX_TENANT_LABELS, counts_by_tenant

NO_LIMIT: RunningLimits = lambda tenants: {}  # noqa: E731


def limited(limits: dict[str, int]) -> RunningLimits:
    """Running limits from a table (0: none), asked for the tenants with queued jobs."""
    return lambda tenants: {t: limits[t] for t in tenants}


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings.of(data_dir=tmp_path / "data")


# --- reads ---------------------------------------------------------------------------------


def test_get_and_list_filter_by_tenant(store: JobStore) -> None:
    ids: dict[str, list[str]] = {"a": [], "b": []}
    for i in range(7):
        tenant = "a" if i % 2 else "b"
        record = make_record(T0 + timedelta(seconds=i), tenant=tenant)
        store.create(record)
        ids[tenant].append(record.id)
    one = ids["a"][0]
    assert store.get(one) is not None and store.get(one, tenant="a") is not None
    assert store.get(one, tenant="b") is None
    assert store.get(one, tenant="") is None
    assert store.get("missing", tenant="a") is None
    for tenant, mine in ids.items():
        seen, cursor = [], None
        while True:
            page, cursor = store.list(limit=2, cursor=cursor, tenant=tenant)
            assert all(r.tenant == tenant for r in page)
            seen += [r.id for r in page]
            if cursor is None:
                break
        assert seen == mine[::-1]
    assert store.list(tenant="nobody") == ([], None)
    assert len(store.list(limit=50)[0]) == 7
    store.update(ids["a"][1], status=JobStatus.SUCCEEDED)
    done, _ = store.list(status=JobStatus.SUCCEEDED, tenant="b")
    assert done == []
    done, _ = store.list(status=JobStatus.SUCCEEDED, tenant="a")
    assert [r.id for r in done] == [ids["a"][1]]


def test_idempotency_keys_are_scoped_per_tenant(store: JobStore) -> None:
    a, is_new = store.create(make_record(tenant="a"), idempotency_key="k", request_hash="h1")
    assert is_new
    b, is_new = store.create(make_record(tenant="b"), idempotency_key="k", request_hash="h2")
    assert is_new and b.id != a.id and b.tenant == "b"
    replay, is_new = store.create(make_record(tenant="a"), idempotency_key="k",
                                  request_hash="h1")
    assert not is_new and replay.id == a.id
    replay, is_new = store.create(make_record(tenant="b"), idempotency_key="k",
                                  request_hash="h2")
    assert not is_new and replay.id == b.id
    with pytest.raises(IdempotencyConflict):  # a's key, b's body
        store.create(make_record(tenant="a"), idempotency_key="k", request_hash="h2")
    # A key that looks like another tenant's scoped key stays the caller's own.
    c, is_new = store.create(make_record(tenant="a"), idempotency_key="b/k",
                             request_hash="h2")
    assert is_new and c.id not in (a.id, b.id)
    assert len(store.list(limit=50)[0]) == 3


# --- quotas --------------------------------------------------------------------------------


def refused(store: JobStore, kind: QuotaKind, limit: int, current: int, quota: Quota,
            **fields: object) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as info:
        store.create(make_record(**fields), quota=quota)  # type: ignore[arg-type]
    assert (info.value.kind, info.value.limit, info.value.current) == (kind, limit, current)
    assert info.value.retry_after_s >= 1
    return info.value


def test_max_queued_quota_at_its_boundary(store: JobStore) -> None:
    quota = Quota(max_queued=2)
    for _ in range(2):
        store.create(make_record(tenant="a"), quota=quota)
    refused(store, QuotaKind.QUEUED, 2, 2, quota, tenant="a")
    store.create(make_record(tenant="b"), quota=quota)  # b's own count
    store.create(make_record(tenant="a", status=JobStatus.SUCCEEDED), quota=Quota())
    store.create(make_record(tenant="a", status=JobStatus.RUNNING), quota=Quota())
    refused(store, QuotaKind.QUEUED, 2, 2, quota, tenant="a")  # only queued jobs count
    (first, *_), _ = store.list(status=JobStatus.QUEUED, tenant="a")
    store.transition(first.id, {JobStatus.QUEUED}, JobStatus.CANCELLED)
    store.create(make_record(tenant="a"), quota=quota)
    assert len(store.list(tenant="a", limit=50)[0]) == 5


def test_max_queued_quota_is_never_overshot_by_concurrent_creates(store: JobStore) -> None:
    quota = Quota(max_queued=5)
    outcomes: list[str] = []
    barrier = threading.Barrier(12)

    def create() -> None:
        barrier.wait()
        try:
            store.create(make_record(tenant="a"), quota=quota)
            outcomes.append("ok")
        except QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] * 5 + ["refused"] * 7
    assert store.counts_by_status()[JobStatus.QUEUED] == 5


def test_stored_bytes_quota_at_its_boundary(store: JobStore) -> None:
    quota = Quota(max_stored_bytes=100)
    store.create(make_record(tenant="a", upload_bytes=40), quota=quota)
    done = make_record(tenant="a", upload_bytes=10, output_bytes=20,
                       status=JobStatus.SUCCEEDED)
    store.create(done, quota=quota)
    store.create(make_record(tenant="a", upload_bytes=30), quota=quota)  # exactly 100
    refused(store, QuotaKind.STORAGE, 100, 100, quota, tenant="a", upload_bytes=1)
    store.create(make_record(tenant="b", upload_bytes=100), quota=quota)  # b's own bytes
    refused(store, QuotaKind.STORAGE, 100, 100, quota, tenant="b", upload_bytes=1)
    # Expired files free their bytes: 30 of them here.
    store.update(done.id, files_expired_at=T0)
    refused(store, QuotaKind.STORAGE, 100, 70, quota, tenant="a", upload_bytes=31)
    store.create(make_record(tenant="a", upload_bytes=30), quota=quota)
    refused(store, QuotaKind.STORAGE, 100, 100, quota, tenant="a", upload_bytes=1)
    # Results written later count too (output_bytes is set as the job finishes).
    later, _ = store.create(make_record(tenant="c", upload_bytes=50), quota=quota)
    store.transition(later.id, {JobStatus.QUEUED}, JobStatus.SUCCEEDED, output_bytes=50)
    refused(store, QuotaKind.STORAGE, 100, 100, quota, tenant="c", upload_bytes=1)


def test_submission_rate_quota_at_its_boundary(store: JobStore) -> None:
    quota = Quota(submissions_per_minute=2)
    store.create(make_record(T0, tenant="a"), quota=quota)
    store.create(make_record(T0 + timedelta(seconds=10), tenant="a"), quota=quota)
    error = refused(store, QuotaKind.RATE, 2, 2, quota, tenant="a",
                    created_at=T0 + timedelta(seconds=20))
    assert error.retry_after_s == 40  # when the first leaves the window
    refused(store, QuotaKind.RATE, 2, 2, quota, tenant="a",
            created_at=T0 + timedelta(seconds=59, microseconds=999_999))
    store.create(make_record(T0 + timedelta(seconds=20), tenant="b"), quota=quota)
    # 60 s after the first, it is out of the window: room for exactly one.
    store.create(make_record(T0 + timedelta(seconds=60), tenant="a"), quota=quota)
    refused(store, QuotaKind.RATE, 2, 2, quota, tenant="a",
            created_at=T0 + timedelta(seconds=60))
    # Every status counts: a submission is a submission.
    store.update(store.list(tenant="a", limit=1)[0][0].id, status=JobStatus.CANCELLED)
    refused(store, QuotaKind.RATE, 2, 2, quota, tenant="a",
            created_at=T0 + timedelta(seconds=61))


def test_zero_limits_refuse_and_no_quota_accepts(store: JobStore) -> None:
    refused(store, QuotaKind.QUEUED, 0, 0, Quota(max_queued=0), tenant="a")
    refused(store, QuotaKind.RATE, 0, 0, Quota(submissions_per_minute=0), tenant="a")
    refused(store, QuotaKind.STORAGE, 0, 0, Quota(max_stored_bytes=0), tenant="a",
            upload_bytes=1)
    store.create(make_record(tenant="a", upload_bytes=0), quota=Quota(max_stored_bytes=0))
    for _ in range(5):
        store.create(make_record(tenant="a"), quota=Quota())
    assert len(store.list(tenant="a", limit=50)[0]) == 6


# --- fair scheduling ----------------------------------------------------------------------


def test_a_burst_of_one_tenant_does_not_starve_another(store: JobStore,
                                                       settings: Settings) -> None:
    """Tenant "alpha" queues 20 jobs, then "beta" one; one worker runs them in the order
    their tasks arrive (each task a turn): beta's job runs second, before alpha's 3rd."""
    burst = [make_record(T0 + timedelta(milliseconds=i), tenant="alpha") for i in range(20)]
    late = make_record(T0 + timedelta(seconds=1), tenant="beta")
    for record in [*burst, late]:
        store.create(record)
    order = []
    for _task in [r.id for r in burst] + [late.id]:  # a turn each, whichever job it names
        held = claim_next(store, settings, "worker-1", NO_LIMIT)
        assert held is not None
        order.append(held.job_id)
        assert held.finish(JobStatus.SUCCEEDED)
    alphas = [r.id for r in burst]
    assert order.index(late.id) < order.index(alphas[2])
    assert order == [alphas[0], late.id, *alphas[1:]]  # alpha's own jobs: oldest first
    assert store.counts_by_status()[JobStatus.SUCCEEDED] == 21
    assert store.next_queued(NO_LIMIT) is None


def test_the_tenant_with_fewer_running_jobs_goes_first(store: JobStore,
                                                       settings: Settings) -> None:
    for i in range(3):
        store.create(make_record(T0 + timedelta(seconds=i), tenant="alpha"))
    theirs = make_record(T0 + timedelta(seconds=9), tenant="beta")
    store.create(theirs)
    first = store.next_queued(NO_LIMIT)
    assert first is not None and claim(store, first, settings, "w1") is not None
    assert first == min(store.list(tenant="alpha", limit=50)[0], key=lambda r: r.created_at).id
    # alpha has one running (unfinished), beta none: beta's job, though younger, is next.
    assert store.next_queued(NO_LIMIT) == theirs.id


def test_a_tenant_at_its_running_limit_gets_no_job(store: JobStore, settings: Settings) -> None:
    limits = {"alpha": 1, "beta": 0}
    alpha = [make_record(T0 + timedelta(seconds=i), tenant="alpha") for i in range(3)]
    for record in alpha:
        store.create(record)
    assert claim(store, alpha[0].id, settings, "w1") is not None
    assert store.next_queued(limited(limits)) is None  # alpha at 1 of 1, nobody else
    assert store.next_queued(NO_LIMIT) == alpha[1].id  # without the limit it would run
    beta = make_record(T0 + timedelta(seconds=5), tenant="beta")
    store.create(beta)
    assert store.next_queued(limited(limits)) == beta.id
    # claim_next follows the rule whatever task arrived: alpha's task starts beta's job.
    held = claim_next(store, settings, "w2", limited(limits))
    assert held is not None and held.job_id == beta.id
    assert store.next_queued(limited(limits)) is None
    assert claim_next(store, settings, "w3", limited(limits)) is None
    queued, _ = store.list(status=JobStatus.QUEUED, limit=50)
    assert [r.id for r in queued] == [alpha[2].id, alpha[1].id]  # both wait, untouched
    # Once alpha's running job ends, alpha may start its next one.
    store.transition(alpha[0].id, {JobStatus.RUNNING}, JobStatus.SUCCEEDED)
    assert store.next_queued(limited(limits)) == alpha[1].id


# --- metrics -------------------------------------------------------------------------------


def test_counts_by_tenant_bounds_the_label_count(store: JobStore) -> None:
    tenants = [f"t{i:02d}" for i in range(60)]
    for i, tenant in enumerate(tenants):
        for _ in range(1 + i % 3):  # 1, 2 or 3 queued jobs each
            store.create(make_record(tenant=tenant))
    store.create(make_record(tenant="t00", status=JobStatus.RUNNING))
    store.create(make_record(tenant="t01", status=JobStatus.SUCCEEDED))  # not counted
    with store.sql().read() as conn:
        counts = counts_by_tenant(conn)
    labels = {tenant for tenant, _ in counts}
    assert len(labels) == MAX_TENANT_LABELS + 1 and "_other" in labels
    total_queued = sum(1 + i % 3 for i in range(60))
    assert sum(n for (_, status), n in counts.items() if status == "queued") == total_queued
    assert counts[("t00", "running")] == 1
    # The busiest 50 keep their names: every 3-job and 2-job tenant (40), then the 1-job
    # tenants by name (t00 counts 2 with its running job).
    busiest = sorted(tenants, key=lambda t: (-(1 + int(t[1:]) % 3 + (t == "t00")), t))[:50]
    assert labels - {"_other"} == set(busiest)
    assert counts[("_other", "queued")] == sum(1 + int(t[1:]) % 3 for t in tenants
                                              if t not in busiest)


def test_counts_by_tenant_with_few_tenants_has_no_other(store: JobStore) -> None:
    store.create(make_record(tenant="a"))
    store.create(make_record(tenant="a", status=JobStatus.RUNNING))
    store.create(make_record(tenant="b"))
    with store.sql().read() as conn:
        assert counts_by_tenant(conn) == {("a", "queued"): 1, ("a", "running"): 1,
                                          ("b", "queued"): 1}


def test_running_limits_take_each_tenants_own_or_the_default(store: JobStore,
                                                            tmp_path: Path) -> None:
    accounts = tenancy.accounts(store)
    accounts.create_tenant("alpha", T0, TenantLimits(max_running=1))
    accounts.create_tenant("beta", T0)
    limit = tenancy.running_limits(Settings.of(data_dir=tmp_path, tenant_max_running=3), store)
    assert limit(["alpha", "beta", "unknown"]) == {"alpha": 1, "beta": 3, "unknown": 3}
    unlimited = tenancy.running_limits(Settings.of(data_dir=tmp_path), store)
    assert unlimited(["alpha", "beta"]) == {"alpha": 1, "beta": 0}
