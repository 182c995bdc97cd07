"""Accepting a dataset: stream -> checks -> record, with every way out cleaned up.

The file is streamed into the blob store under the dataset's id (never held whole in
memory: ``service/uploads.py``), judged by ``core.datasets.check_dataset`` without numpy or
torch, then recorded with the tenant's storage quota and the Idempotency-Key decided inside
the insert's transaction. Anything refused leaves nothing stored.
"""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from core.datasets import DatasetRejected, check_dataset
from core.datasets.record import DATASET_FILE, DatasetInfo, DatasetRecord, new_dataset_id
from core.datasets.store import DatasetStore
from core.jobs.lifecycle import utcnow
from core.settings import Settings
from core.storage.protocols import BlobStore, IdempotencyConflict, JobStore
from core.tenants import tenancy
from core.tenants.quotas import QuotaExceeded
from service.errors import (
    UPLOAD_REJECTIONS,
    ApiError,
    FieldError,
    IdempotencyKeyReused,
    QuotaStorage,
    ValidationFailed,
    describe,
)
from service.submit import check_idempotency_key
from service.uploads import CLOSE, check_content_length, receive_form

DATASET_FIELD = "dataset"


def _rejected(exc: DatasetRejected) -> ApiError:
    loc: list[str | int] = ["body", DATASET_FIELD]
    if exc.field != "file":
        loc.append(exc.field)
    error = FieldError(loc=loc, msg=exc.message, type="value_error")
    return UPLOAD_REJECTIONS[exc.kind](f"{DATASET_FIELD}.{exc.message}", errors=[error])


def _judge(blobs: BlobStore, dataset_id: str, settings: Settings) -> DatasetInfo:
    try:
        return check_dataset(blobs.local_path(dataset_id, DATASET_FILE), settings)
    except DatasetRejected as exc:
        raise _rejected(exc) from exc


def _record(datasets: DatasetStore, record: DatasetRecord, key: str | None,
            settings: Settings, store: JobStore) -> tuple[DatasetRecord, bool]:
    account = tenancy.accounts(store).get_tenant(record.tenant)
    limits = tenancy.effective_limits(settings, account.limits if account else None)
    try:
        return datasets.create(record, idempotency_key=key, request_hash=record.sha256,
                               quota=tenancy.quota(limits))
    except QuotaExceeded as exc:
        raise QuotaStorage(
            f"tenant {record.tenant!r} is at its limit of {exc.limit} stored bytes (jobs' "
            f"files and datasets, this dataset included; now {exc.current}); delete a "
            "dataset or wait for retention", headers={"Retry-After": str(exc.retry_after_s)},
            extra={"limit": exc.limit, "current": exc.current}) from exc
    except IdempotencyConflict as exc:
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different dataset "
                                   "file; use a new key for a new upload") from exc


async def accept_dataset(request: Request, *, settings: Settings, store: JobStore,
                         blobs: BlobStore, idempotency_key: str | None,
                         tenant: str) -> tuple[DatasetRecord, bool]:
    """Store, check and record a dataset for ``tenant``; returns the record and whether it
    is new (False: an idempotent replay of the tenant's own earlier upload)."""
    try:
        check_idempotency_key(idempotency_key)
        check_content_length(request, settings.max_dataset_bytes)
    except ApiError as exc:  # answered before the body was read: read none of it
        exc.headers.update(CLOSE)
        raise
    dataset_id = new_dataset_id()
    datasets = DatasetStore(store.sql())
    try:
        try:
            form = await receive_form(request, blobs, dataset_id, settings,
                                      max_bytes=settings.max_dataset_bytes,
                                      file_field=DATASET_FIELD, file_name=DATASET_FILE)
        except ApiError as exc:
            exc.headers.update(CLOSE)
            raise
        if form.model_sha256 is None:
            error = FieldError(loc=["body", DATASET_FIELD], msg="Field required", type="missing")
            raise ValidationFailed(describe([error]), errors=[error])
        info = await run_in_threadpool(_judge, blobs, dataset_id, settings)
        record = DatasetRecord(id=dataset_id, tenant=tenant, created_at=utcnow(),
                               filename=form.filename, bytes=form.model_bytes,
                               sha256=form.model_sha256, info=info)
        stored, is_new = await run_in_threadpool(_record, datasets, record, idempotency_key,
                                                 settings, store)
    except BaseException:
        await run_in_threadpool(blobs.delete_job_files, dataset_id)
        raise
    if not is_new:
        await run_in_threadpool(blobs.delete_job_files, dataset_id)  # the original has its own
    await run_in_threadpool(blobs.drop_local_copies, dataset_id)
    return stored, is_new
