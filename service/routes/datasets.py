"""/v1/datasets: upload, read, list and delete a tenant's datasets."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from core.datasets.record import DATASETS_PATH, DatasetPublic, DatasetsPublic
from core.datasets.store import DatasetStore, DeleteOutcome
from service.auth import ReadDep, WriteDep
from service.dataset_upload import DATASET_FIELD, accept_dataset
from service.deps import BlobsDep, SettingsDep, StoreDep
from service.errors import (
    AUTH_ERRORS,
    Conflict,
    FieldError,
    IdempotencyKeyReused,
    InsufficientStorage,
    InvalidUpload,
    NotFound,
    PayloadTooLarge,
    QuotaStorage,
    UnsupportedMediaType,
    ValidationFailed,
    problem_responses,
)

router = APIRouter(prefix=DATASETS_PATH, tags=["datasets"])

_UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": [DATASET_FIELD],
        "properties": {DATASET_FIELD: {
            "type": "string", "format": "binary",
            "description": "safetensors or .npz: images (uint8, N x H x W or N x C x H x W, "
            "C 1 or 3), labels (int64, 0..K-1), optional splits (uint8: 0 train, "
            "1 validation, 2 test), mean and std (float32 per channel). Streamed to "
            "storage; over max_dataset_bytes: 413. See docs/datasets.md.",
        }},
    }}},
}


def _json(body: DatasetPublic | DatasetsPublic, status_code: int = 200,
          **headers: str) -> Response:
    return Response(body.model_dump_json(), status_code=status_code,
                    media_type="application/json", headers=headers)


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        200: {"model": DatasetPublic, "description": "Idempotent replay: the dataset this "
              "key made."},
        **problem_responses(PayloadTooLarge, UnsupportedMediaType, ValidationFailed,
                            InvalidUpload, IdempotencyKeyReused, QuotaStorage,
                            InsufficientStorage, *AUTH_ERRORS),
    },
)
async def upload_dataset(
    request: Request, who: WriteDep, settings: SettingsDep, store: StoreDep, blobs: BlobsDep,
    idempotency_key: Annotated[str | None, Header(
        description="Same key and same file: the same dataset back; another file: 422."
    )] = None,
) -> Response:
    """Upload a dataset (checked before it is stored); answers 201 and the dataset."""
    record, is_new = await accept_dataset(request, settings=settings, store=store,
                                          blobs=blobs, idempotency_key=idempotency_key,
                                          tenant=who.tenant)
    return _json(DatasetPublic.from_record(record), 201 if is_new else 200,
                 Location=f"{DATASETS_PATH}/{record.id}")


@router.get("", response_model=DatasetsPublic,
            responses=problem_responses(ValidationFailed, *AUTH_ERRORS))
def list_datasets(
    who: ReadDep, store: StoreDep, limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: str | None = None,
) -> Response:
    """List your datasets, newest first; follow next_cursor for more."""
    try:
        page, next_cursor = DatasetStore(store.sql()).list(who.tenant, limit=limit,
                                                           cursor=cursor)
    except ValueError as exc:
        error = FieldError(loc=["query", "cursor"], msg="not a cursor this API handed out",
                           type="value_error")
        raise ValidationFailed("cursor: not a cursor this API handed out",
                               errors=[error]) from exc
    return _json(DatasetsPublic(data=[DatasetPublic.from_record(r) for r in page],
                                next_cursor=next_cursor))


@router.get("/{dataset_id}", response_model=DatasetPublic,
            responses=problem_responses(NotFound, *AUTH_ERRORS))
def get_dataset(dataset_id: str, who: ReadDep, store: StoreDep) -> Response:
    """One dataset: shape, classes, split sizes, sha256, bytes."""
    record = DatasetStore(store.sql()).get(dataset_id, who.tenant)
    if record is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return _json(DatasetPublic.from_record(record))


@router.delete("/{dataset_id}", status_code=204,
               responses=problem_responses(NotFound, Conflict, *AUTH_ERRORS))
async def delete_dataset(dataset_id: str, who: WriteDep, store: StoreDep,
                         blobs: BlobsDep) -> Response:
    """Delete a dataset (409 while a queued or running job uses it)."""
    result = await run_in_threadpool(DatasetStore(store.sql()).delete, dataset_id, who.tenant)
    if result.outcome is DeleteOutcome.NOT_FOUND:
        raise NotFound(f"no dataset {dataset_id!r}")
    if result.outcome is DeleteOutcome.IN_USE:
        raise Conflict(f"dataset {dataset_id} is used by {len(result.jobs)} queued or running "
                       "job(s); cancel them or wait until they end",
                       extra={"jobs": result.jobs})
    await run_in_threadpool(blobs.delete_job_files, dataset_id)
    return Response(status_code=204)
