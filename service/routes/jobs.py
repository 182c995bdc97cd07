"""/v1/jobs: submit, read, list, cancel, and fetch a job's report and model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from core.jobs.formats import ModelFormat
from core.jobs.lifecycle import CancelResult, cancel
from core.jobs.public import (
    JOBS_PATH,
    SPEC_EXAMPLES,
    DeliveriesPublic,
    JobPublic,
    JobsPublic,
    PageLinks,
)
from core.jobs.record import JobRecord, JobStatus
from core.storage.digest import stored_sha256
from core.storage.protocols import REPORT, BlobStore, JobStore, model_file
from service.auth import ReadDep, WriteDep
from service.deps import (
    BlobsDep,
    CeleryDep,
    DeliveriesDep,
    MetricsDep,
    RedisDep,
    SettingsDep,
    StoreDep,
)
from service.downloads import blob_response
from service.errors import (
    AUTH_ERRORS,
    BrokerUnavailable,
    FieldError,
    Gone,
    IdempotencyKeyReused,
    InsufficientStorage,
    InvalidUpload,
    JobFinished,
    JobNotFinished,
    NoModel,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    QuotaQueued,
    QuotaRate,
    QuotaStorage,
    RequestTimeout,
    UnsupportedMediaType,
    ValidationFailed,
    problem_responses,
)
from service.job_access import finished_files, finished_report, load_job
from service.submit import submit

router = APIRouter(prefix=JOBS_PATH, tags=["jobs"])

EVENTS_POLL_S = 0.5
EVENTS_KEEPALIVE_S = 15.0

_SUBMIT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["model", "spec"],
                "properties": {
                    "model": {
                        "type": "string",
                        "format": "binary",
                        "description": "TorchScript archive (torch.jit.save), a torch.save "
                        "state_dict, or safetensors. Streamed to storage; over the size "
                        "limit: 413.",
                    },
                    "spec": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "description": "The pruning spec as JSON (schema: JobSpec).",
                    },
                },
            },
            "encoding": {"spec": {"contentType": "application/json"}},
            "examples": {
                name: {"summary": ex["summary"], "value": {"spec": ex["value"]}}
                for name, ex in SPEC_EXAMPLES.items()
            },
        }
    },
}


def _json(public: JobPublic | JobsPublic, status_code: int = 200, **headers: str) -> Response:
    # Serialised once by pydantic-core; FastAPI's response_model still documents the shape.
    return Response(public.model_dump_json(), status_code=status_code,
                    media_type="application/json", headers=headers)


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    openapi_extra={"requestBody": _SUBMIT_BODY},
    responses={
        200: {"model": JobPublic, "description": "Idempotent replay: the job this key made."},
        **problem_responses(PayloadTooLarge, RequestTimeout, UnsupportedMediaType,
                            ValidationFailed,
                            InvalidUpload, IdempotencyKeyReused, QueueFull, QuotaQueued,
                            QuotaStorage, QuotaRate, BrokerUnavailable, InsufficientStorage,
                            *AUTH_ERRORS),
    },
)
async def create_job(
    request: Request,
    who: WriteDep,
    settings: SettingsDep,
    store: StoreDep,
    blobs: BlobsDep,
    celery: CeleryDep,
    redis: RedisDep,
    metrics: MetricsDep,
    idempotency_key: Annotated[str | None, Header(
        description="Same key and same body: the same job back; same key, other body: 422."
    )] = None,
) -> Response:
    """Submit a model and a pruning spec; answers 202 and the queued job."""
    record, is_new = await submit(request, settings=settings, store=store, blobs=blobs,
                                  celery=celery, redis=redis, idempotency_key=idempotency_key,
                                  tenant=who.tenant)
    if is_new:
        metrics.upload_bytes.inc(record.upload_bytes)
    location = f"{JOBS_PATH}/{record.id}"
    return _json(JobPublic.from_record(record), 202 if is_new else 200, Location=location)


@router.get("", response_model=JobsPublic,
            responses=problem_responses(ValidationFailed, *AUTH_ERRORS))
def list_jobs(
    who: ReadDep,
    store: StoreDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: str | None = None,
) -> Response:
    """List jobs, newest first, optionally by status; follow next_cursor for more."""
    try:
        page, next_cursor = store.list(status=status, limit=limit, cursor=cursor,
                                       tenant=who.tenant)
    except ValueError as exc:
        error = FieldError(loc=["query", "cursor"], msg="not a cursor this API handed out",
                           type="value_error")
        raise ValidationFailed("cursor: not a cursor this API handed out",
                               errors=[error]) from exc
    query = f"limit={limit}" + (f"&status={status.value}" if status else "")
    links = PageLinks(
        self=f"{JOBS_PATH}?{query}" + (f"&cursor={cursor}" if cursor else ""),
        next=f"{JOBS_PATH}?{query}&cursor={next_cursor}" if next_cursor else None,
    )
    data = [JobPublic.from_record(r) for r in page]
    return _json(JobsPublic(data=data, next_cursor=next_cursor, links=links))


@router.get("/{job_id}", response_model=JobPublic,
            responses=problem_responses(NotFound, *AUTH_ERRORS))
async def get_job(job_id: str, who: ReadDep, store: StoreDep) -> Response:
    """One job: status, progress, spec, error, links."""
    # The hot path (clients poll it): one indexed SQLite read of ~20 us, done on the event
    # loop. A thread-pool hop would cost more than the read; WAL readers never wait on writers.
    # A PostgreSQL read is a network round trip: on the event loop it would stall every
    # request behind it, so it goes to the thread pool.
    if store.reads_are_local:
        return _json(JobPublic.from_record(load_job(store, job_id, who.tenant)))
    return _json(JobPublic.from_record(
        await run_in_threadpool(load_job, store, job_id, who.tenant)))


@router.get(
    "/{job_id}/report",
    responses={200: {"content": {"application/json": {}}, "description": "The Report JSON."},
               **problem_responses(NotFound, JobNotFinished, NoModel, Gone, *AUTH_ERRORS)},
)
def get_report(
    job_id: str, who: ReadDep, store: StoreDep, blobs: BlobsDep,
    range_: Annotated[str | None, Header(alias="range", include_in_schema=False)] = None,
) -> Response:
    """The engine's report: sparsity per tensor, accuracy before/after, timings."""
    record = load_job(store, job_id, who.tenant)
    finished_report(record, blobs.exists(job_id, REPORT))
    if not blobs.exists(job_id, REPORT):
        raise Gone(f"the report of job {job_id} is no longer stored")
    return blob_response(blobs, job_id, REPORT, range_, media_type="application/json")


def _etag_matches(if_none_match: str | None, sha: str) -> bool:
    if if_none_match is None:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in if_none_match.split(",")}
    return "*" in tags or sha in tags


def _model_sha(record: JobRecord, blobs: BlobStore, fmt: ModelFormat) -> str:
    if fmt == record.model_format and record.model_sha256:
        return record.model_sha256
    return stored_sha256(blobs, record.id, model_file(fmt))


@router.get(
    "/{job_id}/model",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}},
                     "description": "The pruned model; its sha256 in X-Content-SHA256 and ETag."},
               304: {"description": "If-None-Match matched the model's ETag."},
               307: {"description": "Presigned object-store URL (PRUNER_S3_PRESIGN_S set)."},
               **problem_responses(NotFound, JobNotFinished, NoModel, Gone, ValidationFailed,
                                   *AUTH_ERRORS)},
)
def get_model(
    job_id: str,
    who: ReadDep,
    store: StoreDep,
    blobs: BlobsDep,
    format: Annotated[ModelFormat | None, Query(
        description="Default: the primary format the job produced (see model.format)."
    )] = None,
    if_none_match: Annotated[str | None, Header()] = None,
    range_: Annotated[str | None, Header(alias="range", include_in_schema=False)] = None,
) -> Response:
    """Download the pruned model (default: the format the job produced)."""
    record = load_job(store, job_id, who.tenant)
    finished_files(record)
    fmt = format or record.model_format or ModelFormat.TORCHSCRIPT
    name = model_file(fmt)
    if not blobs.exists(job_id, name):
        available = [f for f in ModelFormat if blobs.exists(job_id, model_file(f))]
        if not available:  # retention is deleting the files right now
            raise Gone(f"the models of job {job_id} are no longer stored")
        raise NotFound(f"job {job_id} has no {fmt} model; available: {', '.join(available)}",
                       extra={"available_formats": available})
    sha = _model_sha(record, blobs, fmt)
    blobs.drop_local_copies(job_id)  # a remote store's hash sidecar went through the cache
    headers = {"ETag": f'"{sha}"', "X-Content-SHA256": sha}
    if _etag_matches(if_none_match, sha):
        return Response(status_code=304, headers=headers)
    filename = f"{job_id}-pruned.{fmt.extension}"
    url = blobs.download_url(job_id, name, filename)
    if url is not None:  # object storage with presigning on: the client fetches it there
        return RedirectResponse(url, status_code=307, headers=headers)
    return blob_response(blobs, job_id, name, range_, media_type="application/octet-stream",
                         filename=filename, headers=headers)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={202: {"model": JobPublic, "description": "Running: it stops at the next batch."},
               **problem_responses(NotFound, JobFinished, *AUTH_ERRORS)},
)
def cancel_job(job_id: str, who: WriteDep, store: StoreDep) -> Response:
    """Cancel a job: a queued one at once (200), a running one at its next batch (202)."""
    load_job(store, job_id, who.tenant)  # another tenant's job: 404, and nothing changes
    result, record = cancel(store, job_id)
    if result is CancelResult.NOT_FOUND or record is None:
        raise NotFound(f"no job {job_id!r}")
    if result is CancelResult.FINISHED:
        raise JobFinished(f"job {job_id} already ended {record.status.value}")
    if result is CancelResult.CONTESTED:
        raise JobFinished(f"job {job_id} changed state while cancelling; read it again")
    return _json(JobPublic.from_record(record), 200 if result is CancelResult.CANCELLED else 202)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "Server-sent events: `job` with the JobPublic JSON on every "
                     "change, until the job ends."},
               **problem_responses(NotFound, *AUTH_ERRORS)},
)
async def job_events(job_id: str, request: Request, who: ReadDep,
                     store: StoreDep) -> StreamingResponse:
    """Watch a job: server-sent events on every change, until it ends."""
    first = await run_in_threadpool(load_job, store, job_id, who.tenant)
    return StreamingResponse(_events(request, store, first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _events(request: Request, store: JobStore, record: JobRecord) -> AsyncIterator[str]:
    last, quiet = "", 0.0
    while True:
        body = JobPublic.from_record(record).model_dump_json()
        if body != last:
            yield f"event: job\ndata: {body}\n\n"
            last, quiet = body, 0.0
        elif quiet >= EVENTS_KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet = 0.0
        if record.status.terminal or await request.is_disconnected():
            return
        await asyncio.sleep(EVENTS_POLL_S)
        quiet += EVENTS_POLL_S
        current = await run_in_threadpool(store.get, record.id)
        if current is None:
            return
        record = current


@router.get("/{job_id}/deliveries", response_model=DeliveriesPublic,
            responses=problem_responses(NotFound, *AUTH_ERRORS))
def job_deliveries(job_id: str, who: ReadDep, store: StoreDep,
                   deliveries: DeliveriesDep) -> DeliveriesPublic:
    """The job's webhook deliveries: attempts, status codes, next attempt."""
    record = load_job(store, job_id, who.tenant)
    return DeliveriesPublic(notify=record.notify, data=deliveries.for_job(job_id))
