"""Accepting a job: upload -> checks -> record -> queue, with every way out cleaned up.

A job is accepted only when its record exists AND its task reached the broker. If the
broker refuses, the record and files are removed and the client gets 503 + Retry-After: a
503 tells the client to retry, so keeping the job would make a duplicate of its retry.
"""

from __future__ import annotations

import hashlib
import re

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Request
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from core.datasets.store import DatasetStore
from core.jobs.estimate import estimate, too_long
from core.jobs.formats import UploadFormat
from core.jobs.lifecycle import utcnow
from core.jobs.record import JobRecord, JobStatus, new_job_id
from core.jobs.report import Progress
from core.jobs.spec import JobSpec
from core.queue import enqueue_job
from core.settings import Settings
from core.storage.protocols import (
    UPLOAD,
    BlobStore,
    DatasetMissing,
    IdempotencyConflict,
    JobStore,
    QueueLimitReached,
)
from core.tenants import tenancy
from core.tenants.accounts import Notify
from core.tenants.quotas import Quota, QuotaExceeded, QuotaKind
from core.uploads import UploadRejected, check_upload
from core.webhooks.addresses import notify_url_problem
from service.errors import (
    ApiError,
    BrokerUnavailable,
    FieldError,
    IdempotencyKeyReused,
    QueueFull,
    QuotaQueued,
    QuotaRate,
    QuotaStorage,
    ValidationFailed,
    describe,
    field_errors,
    upload_rejected,
)
from service.uploads import (
    CLOSE,
    MODEL_FIELD,
    SPEC_FIELD,
    ReceivedForm,
    check_content_length,
    receive_form,
)

BROKER_RETRY_AFTER_S = 5
QUEUE_FULL_RETRY_AFTER_S = 30
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as the IETF draft allows


def broker_down(detail: str) -> BrokerUnavailable:
    return BrokerUnavailable(detail, headers={"Retry-After": str(BROKER_RETRY_AFTER_S)})


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        error = FieldError(loc=["header", "Idempotency-Key"], type="value_error",
                           msg="must be 1 to 255 visible ASCII characters")
        raise ValidationFailed(describe([error]), errors=[error])


def queue_full(depth: int, settings: Settings) -> QueueFull:
    return QueueFull(
        f"{depth} jobs are waiting (limit {settings.max_queue_depth}); retry later",
        headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
    )


async def check_queue(redis: aioredis.Redis, settings: Settings) -> None:
    """503 when Redis is unreachable, 429 when the queue is deeper than allowed.

    A cheap early answer before the upload is read; the binding limit is the count of queued
    jobs taken when the record is created (``max_queued``), which a burst cannot overshoot."""
    try:
        depth = int(await redis.llen(settings.queue_name))
    except (RedisError, OSError) as exc:
        raise broker_down(f"the job queue is unreachable ({type(exc).__name__})") from exc
    if depth >= settings.max_queue_depth:
        raise queue_full(depth, settings)


def parse_spec(form: ReceivedForm) -> JobSpec:
    missing = [name for name, absent in ((MODEL_FIELD, form.model_sha256 is None),
                                         (SPEC_FIELD, form.spec is None)) if absent]
    if missing:
        errors = [FieldError(loc=["body", n], msg="Field required", type="missing")
                  for n in missing]
        raise ValidationFailed(describe(errors), errors=errors)
    assert form.spec is not None
    try:
        return JobSpec.model_validate_json(form.spec)
    except ValidationError as exc:
        errors = field_errors(exc.errors(include_url=False), prefix=("body", SPEC_FIELD))
        raise ValidationFailed(describe(errors), errors=errors) from exc


def check_duration(spec: JobSpec, settings: Settings) -> None:
    """422 when the job's estimated fine-tuning cannot fit in the job time limit."""
    limit_s = spec.limits.wall_clock_s(settings.job_soft_time_limit_s)
    reason = too_long(spec, settings.finetune_epoch_s, limit_s)
    if reason is not None:
        field = estimate(spec, settings.finetune_epoch_s).field
        error = FieldError(loc=["body", SPEC_FIELD, *field], msg=reason, type="value_error")
        raise ValidationFailed(describe([error]), errors=[error])


def check_dataset_ref(spec: JobSpec, store: JobStore, tenant: str) -> None:
    """422 when ``data.dataset`` names no dataset of this tenant (another tenant's does not
    exist), or holds too few training samples for ``finetune.validation_size``."""
    if not spec.data.uploaded:
        return
    record = DatasetStore(store.sql()).get(spec.data.dataset, tenant)
    if record is None:
        raise no_such_dataset(spec.data.dataset)
    train = record.info.splits.train
    if spec.finetune.validation_size < train:
        return
    msg = (f"{spec.finetune.validation_size} validation samples must be fewer than the "
           f"dataset's {train} training samples")
    error = FieldError(loc=["body", SPEC_FIELD, "finetune", "validation_size"], msg=msg,
                       type="value_error")
    raise ValidationFailed(describe([error]), errors=[error])


def no_such_dataset(dataset_id: str) -> ValidationFailed:
    """422 at ``data.dataset``: checked before the upload is judged, and again inside the
    job insert's transaction (a dataset deleted in between: ``DatasetMissing``)."""
    error = FieldError(loc=["body", SPEC_FIELD, "data", "dataset"],
                       msg=f"no dataset {dataset_id!r} (GET /v1/datasets)", type="value_error")
    return ValidationFailed(describe([error]), errors=[error])


def check_notify_url(notify: Notify, settings: Settings, source: str) -> None:
    """422 for a webhook URL that can never be delivered (``core.webhooks.addresses``)."""
    reason = notify_url_problem(notify.url, settings.webhook_allowed)
    if reason is not None:
        loc = ["body", SPEC_FIELD, "notify", "url"] if source == "spec" else ["tenant", "notify"]
        error = FieldError(loc=loc, msg=f"webhook url {reason}", type="value_error")
        raise ValidationFailed(describe([error]), errors=[error])


def judge_upload(blobs: BlobStore, job_id: str, settings: Settings) -> UploadFormat:
    """The container of an upload the checks accept (the record shows zip or safetensors)."""
    try:
        fmt = check_upload(blobs.local_path(job_id, UPLOAD), settings)
    except UploadRejected as exc:
        raise upload_rejected(exc) from exc
    if fmt.container is None:  # check_upload names only formats that arrive as uploads
        raise AssertionError(f"check_upload judged a download-only format: {fmt}")
    return fmt.container


def request_hash(spec: JobSpec, upload_sha256: str) -> str:
    """What makes two submissions "the same request" for the Idempotency-Key."""
    canonical = spec.model_dump_json().encode()
    return hashlib.sha256(canonical + b"\0" + upload_sha256.encode()).hexdigest()


async def submit(
    request: Request,
    *,
    settings: Settings,
    store: JobStore,
    blobs: BlobStore,
    celery: Celery,
    redis: aioredis.Redis,
    idempotency_key: str | None,
    tenant: str,
) -> tuple[JobRecord, bool]:
    """Accept a job for ``tenant``; returns the record and whether it is new (False: an
    idempotent replay of the tenant's own earlier submission)."""
    try:
        check_idempotency_key(idempotency_key)
        check_content_length(request, settings.max_upload_bytes)
        await check_queue(redis, settings)
    except ApiError as exc:  # answered before the body was read: read none of it
        exc.headers.update(CLOSE)
        raise
    job_id = new_job_id()
    try:
        try:
            form = await receive_form(request, blobs, job_id, settings)
        except ApiError as exc:
            exc.headers.update(CLOSE)
            raise
        spec = parse_spec(form)
        check_duration(spec, settings)
        await run_in_threadpool(check_dataset_ref, spec, store, tenant)
        account = await run_in_threadpool(tenancy.accounts(store).get_tenant, tenant)
        if spec.notify is not None:  # a tenant's default was checked when it was set
            check_notify_url(spec.notify, settings, "spec")
        notify = spec.notify or (account.notify if account is not None else None)
        upload_format = await run_in_threadpool(judge_upload, blobs, job_id, settings)
        assert form.model_sha256 is not None
        record = JobRecord(
            id=job_id, status=JobStatus.QUEUED, spec=spec, created_at=utcnow(),
            progress=Progress(phase="queued"), upload_format=upload_format,
            upload_bytes=form.model_bytes, upload_sha256=form.model_sha256,
            tenant=tenant, notify=notify,
        )
        limits = tenancy.effective_limits(settings, account.limits if account else None)
        stored, is_new = await run_in_threadpool(
            _create, store, record, idempotency_key, request_hash(spec, form.model_sha256),
            settings, tenancy.quota(limits),
        )
    except BaseException:
        await run_in_threadpool(blobs.delete_job_files, job_id)
        raise
    if not is_new:
        await run_in_threadpool(blobs.delete_job_files, job_id)  # the original job has its own
        return stored, False
    await _enqueue_or_forget(store, blobs, celery, settings, job_id)
    await run_in_threadpool(blobs.drop_local_copies, job_id)  # the checks' scratch copy
    return stored, True


QUOTA_ERRORS: dict[QuotaKind, tuple[type[ApiError], str]] = {
    QuotaKind.QUEUED: (QuotaQueued, "queued jobs"),
    QuotaKind.STORAGE: (QuotaStorage, "stored bytes (uploads and results of unexpired jobs, "
                        "this upload included)"),
    QuotaKind.RATE: (QuotaRate, "submissions in the last 60 s"),
}


def _create(
    store: JobStore, record: JobRecord, key: str | None, hash_: str, settings: Settings,
    quota: Quota,
) -> tuple[JobRecord, bool]:
    try:
        return store.create(record, idempotency_key=key, request_hash=hash_,
                            max_queued=settings.max_queue_depth, quota=quota)
    except QueueLimitReached as exc:
        raise queue_full(exc.queued, settings) from exc
    except QuotaExceeded as exc:
        error, what = QUOTA_ERRORS[exc.kind]
        raise error(
            f"tenant {record.tenant!r} is at its limit of {exc.limit} {what} "
            f"(now {exc.current}); retry later",
            headers={"Retry-After": str(exc.retry_after_s)},
            extra={"limit": exc.limit, "current": exc.current},
        ) from exc
    except DatasetMissing as exc:
        raise no_such_dataset(exc.dataset_id) from exc
    except IdempotencyConflict as exc:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used for a different request (another spec or model "
            "file); use a new key for a new request"
        ) from exc


async def _enqueue_or_forget(
    store: JobStore, blobs: BlobStore, celery: Celery, settings: Settings, job_id: str
) -> None:
    try:
        await run_in_threadpool(enqueue_job, celery, settings, job_id)
    except (OperationalError, RedisError, OSError) as exc:
        await run_in_threadpool(_forget, store, blobs, job_id)
        raise broker_down(f"the job queue refused the job ({type(exc).__name__})") from exc


def _forget(store: JobStore, blobs: BlobStore, job_id: str) -> None:
    store.delete(job_id)
    blobs.delete_job_files(job_id)

