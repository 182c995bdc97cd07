"""Dataset records (``core.datasets.store``) on every job-store backend: tenancy,
idempotency, the storage quota shared with jobs, deletion while in use."""

from __future__ import annotations

import threading

import pytest

from api_tests.core.datasets.factories import make_dataset
from api_tests.core.factories import make_record
from core.datasets.store import DatasetStore, DeleteOutcome
from core.jobs.record import JobRecord, JobStatus
from core.jobs.spec import REFERENCE_RECIPE, DataSpec
from core.storage.protocols import DatasetMissing, IdempotencyConflict, JobStore
from core.tenants.quotas import Quota, QuotaExceeded


def test_a_dataset_is_read_back_by_its_tenant_only(store: JobStore) -> None:
    datasets = DatasetStore(store.sql())
    record, _ = datasets.create(make_dataset("acme"))
    assert (datasets.get(record.id, "acme"), datasets.get(record.id, "other")) == (record, None)


def test_the_list_is_newest_first_and_pages(store: JobStore) -> None:
    datasets = DatasetStore(store.sql())
    made = [datasets.create(make_dataset("acme", n=i))[0].id for i in range(3)]
    datasets.create(make_dataset("other", n=9))
    first, cursor = datasets.list("acme", limit=2)
    rest, end = datasets.list("acme", limit=2, cursor=cursor)
    assert ([d.id for d in first + rest], end) == (made[::-1], None)


def test_the_same_key_and_request_is_the_same_dataset(store: JobStore) -> None:
    datasets = DatasetStore(store.sql())
    first, _ = datasets.create(make_dataset(), idempotency_key="k", request_hash="h")
    again, is_new = datasets.create(make_dataset(), idempotency_key="k", request_hash="h")
    assert (again.id, is_new) == (first.id, False)


def test_the_same_key_for_another_file_is_refused(store: JobStore) -> None:
    datasets = DatasetStore(store.sql())
    datasets.create(make_dataset(), idempotency_key="k", request_hash="h")
    with pytest.raises(IdempotencyConflict):
        datasets.create(make_dataset(), idempotency_key="k", request_hash="other")


def test_the_storage_quota_counts_jobs_and_datasets(store: JobStore) -> None:
    datasets = DatasetStore(store.sql())
    store.create(make_record(tenant="acme", upload_bytes=60))
    with pytest.raises(QuotaExceeded) as info:
        datasets.create(make_dataset("acme", size=50), quota=Quota(max_stored_bytes=100))
    assert info.value.current == 60


def test_a_job_is_refused_when_datasets_fill_the_quota(store: JobStore) -> None:
    DatasetStore(store.sql()).create(make_dataset("acme", size=95))
    with pytest.raises(QuotaExceeded) as info:
        store.create(make_record(tenant="acme", upload_bytes=10),
                     quota=Quota(max_stored_bytes=100))
    assert info.value.current == 95


def _job_on(dataset_id: str, status: JobStatus) -> JobRecord:
    spec = REFERENCE_RECIPE.model_copy(update={"data": DataSpec(dataset=dataset_id)})
    return make_record(tenant="acme", status=status, spec=spec)


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
def test_delete_is_refused_while_an_unfinished_job_uses_it(store: JobStore,
                                                           status: JobStatus) -> None:
    datasets = DatasetStore(store.sql())
    record, _ = datasets.create(make_dataset("acme"))
    job = _job_on(record.id, status)
    store.create(job)
    result = datasets.delete(record.id, "acme")
    assert (result.outcome, result.jobs) == (DeleteOutcome.IN_USE, [job.id])


def test_delete_after_the_job_ended_removes_it(store: JobStore) -> None:
    datasets = DatasetStore(store.sql())
    record, _ = datasets.create(make_dataset("acme"))
    store.create(_job_on(record.id, JobStatus.SUCCEEDED))
    outcome = datasets.delete(record.id, "acme").outcome
    assert (outcome, datasets.get(record.id, "acme")) == (DeleteOutcome.DELETED, None)


def test_another_tenants_delete_finds_nothing(store: JobStore) -> None:
    datasets = DatasetStore(store.sql())
    record, _ = datasets.create(make_dataset("acme"))
    assert datasets.delete(record.id, "other").outcome is DeleteOutcome.NOT_FOUND


def test_a_job_on_a_deleted_dataset_is_refused_at_insert(store: JobStore) -> None:
    datasets = DatasetStore(store.sql())
    record, _ = datasets.create(make_dataset("acme"))
    datasets.delete(record.id, "acme")
    with pytest.raises(DatasetMissing):
        store.create(_job_on(record.id, JobStatus.QUEUED))


def test_a_job_on_another_tenants_dataset_is_refused_at_insert(store: JobStore) -> None:
    record, _ = DatasetStore(store.sql()).create(make_dataset("other"))
    with pytest.raises(DatasetMissing):
        store.create(_job_on(record.id, JobStatus.QUEUED))


def _race(store: JobStore) -> tuple[bool, DeleteOutcome]:
    """A job insert and a delete of its dataset at once: (job created, delete outcome)."""
    datasets = DatasetStore(store.sql())
    record, _ = datasets.create(make_dataset("acme"))
    start, created, outcome = threading.Barrier(2), [False], [DeleteOutcome.NOT_FOUND]

    def submit() -> None:
        start.wait()
        try:
            store.create(_job_on(record.id, JobStatus.QUEUED))
            created[0] = True
        except DatasetMissing:
            pass

    def delete() -> None:
        start.wait()
        outcome[0] = datasets.delete(record.id, "acme").outcome

    threads = [threading.Thread(target=submit), threading.Thread(target=delete)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return created[0], outcome[0]


def test_a_racing_submission_and_delete_never_both_succeed(store: JobStore) -> None:
    results = {_race(store) for _ in range(20)}
    assert results <= {(True, DeleteOutcome.IN_USE), (False, DeleteOutcome.DELETED)}
