"""One error hierarchy, one renderer: every HTTP error is RFC 9457 problem+json.

A route raises an ``ApiError`` subclass; FastAPI's own errors (request validation, unknown
route, wrong method) and anything unexpected are rendered the same way, each with a stable
``code`` from ``core.jobs.error_codes.ProblemCode``. Routes list the errors they raise with
``problem_responses(...)`` so that they appear in the OpenAPI document.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from core.jobs.error_codes import ProblemCode
from core.storage.protocols import StoreUnavailable
from core.uploads import RejectKind, UploadRejected

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:pruning-service:problem:"
log = logging.getLogger("service")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: e.g. ['body', 'spec', 'pruning', 'amount'].")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details, plus a stable ``code``."""

    type: str = Field(description="URI of the problem type: urn:pruning-service:problem:<code>.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(default=None, description="The request path.")
    code: ProblemCode
    errors: list[FieldError] | None = Field(default=None, description="422: each bad field.")


class ApiError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[ProblemCode] = ProblemCode.INTERNAL_ERROR
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: Sequence[FieldError] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.errors = list(errors) if errors is not None else None
        self.extra = extra or {}


class NotFound(ApiError):
    status, code, title = 404, ProblemCode.NOT_FOUND, "Not found"


class MethodNotAllowed(ApiError):
    status, code, title = 405, ProblemCode.METHOD_NOT_ALLOWED, "Method not allowed"


class ValidationFailed(ApiError):
    status, code, title = 422, ProblemCode.VALIDATION_ERROR, "Invalid request"


class PayloadTooLarge(ApiError):
    status, code, title = 413, ProblemCode.PAYLOAD_TOO_LARGE, "Payload too large"


class UnsupportedMediaType(ApiError):
    status, code, title = 415, ProblemCode.UNSUPPORTED_MEDIA_TYPE, "Unsupported media type"


class InvalidUpload(ApiError):
    status, code, title = 422, ProblemCode.INVALID_UPLOAD, "Invalid model file"


class JobNotFinished(ApiError):
    status, code, title = 409, ProblemCode.JOB_NOT_FINISHED, "Job not finished"


class JobFinished(ApiError):
    status, code, title = 409, ProblemCode.JOB_FINISHED, "Job already finished"


class NoModel(ApiError):
    status, code, title = 409, ProblemCode.NO_MODEL, "Job produced no model"


class Gone(ApiError):
    status, code, title = 410, ProblemCode.GONE, "Files expired"


class IdempotencyKeyReused(ApiError):
    status, code, title = 422, ProblemCode.IDEMPOTENCY_KEY_REUSED, "Idempotency key reused"


class QueueFull(ApiError):
    status, code, title = 429, ProblemCode.QUEUE_FULL, "Queue full"


class BrokerUnavailable(ApiError):
    status, code, title = 503, ProblemCode.BROKER_UNAVAILABLE, "Queue unavailable"


class StorageUnavailable(ApiError):
    status, code, title = 503, ProblemCode.STORAGE_UNAVAILABLE, "Storage unavailable"


STORAGE_RETRY_AFTER_S = 5


class InsufficientStorage(ApiError):
    status, code, title = 507, ProblemCode.INSUFFICIENT_STORAGE, "Insufficient storage"


class Unauthorized(ApiError):
    status, code, title = 401, ProblemCode.UNAUTHORIZED, "Unauthorized"


class Forbidden(ApiError):
    status, code, title = 403, ProblemCode.FORBIDDEN, "Forbidden"


class CrossOrigin(ApiError):
    status, code, title = 403, ProblemCode.CROSS_ORIGIN, "Cross-origin request refused"


class RequestTimeout(ApiError):
    status, code, title = 408, ProblemCode.REQUEST_TIMEOUT, "Request timeout"


class Conflict(ApiError):
    status, code, title = 409, ProblemCode.CONFLICT, "Conflict"


class QuotaQueued(ApiError):
    status, code, title = 429, ProblemCode.QUOTA_QUEUED, "Tenant queue limit"


class QuotaStorage(ApiError):
    status, code, title = 429, ProblemCode.QUOTA_STORAGE, "Tenant storage limit"


class QuotaRate(ApiError):
    status, code, title = 429, ProblemCode.QUOTA_RATE, "Tenant submission rate limit"


# Every authenticated route can answer these (problem_responses(..., *AUTH_ERRORS)).
AUTH_ERRORS: tuple[type[ApiError], ...] = (Unauthorized, Forbidden, CrossOrigin)


class NotReady(ApiError):
    status, code, title = 503, ProblemCode.NOT_READY, "Not ready"


# Why core refused an upload -> what the API answers: the one place the two meet.
UPLOAD_REJECTIONS: dict[RejectKind, type[ApiError]] = {
    RejectKind.TOO_LARGE: PayloadTooLarge,
    RejectKind.NOT_A_MODEL: UnsupportedMediaType,
    RejectKind.MALFORMED: InvalidUpload,
    RejectKind.UNSAFE: InvalidUpload,
    RejectKind.UNSUPPORTED: InvalidUpload,
}


def upload_rejected(exc: UploadRejected) -> ApiError:
    """The HTTP error for an upload the checks refused."""
    return UPLOAD_REJECTIONS[exc.kind](exc.message)


def problem_response(request: Request, error: ApiError) -> JSONResponse:
    return render_problem(request, error.status, error.code, error.title, error.detail,
                          headers=error.headers, errors=error.errors, extra=error.extra)


def render_problem(
    request: Request,
    status: int,
    code: ProblemCode,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    errors: list[FieldError] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = Problem(
        type=TYPE_PREFIX + code.value, title=title, status=status, detail=detail,
        instance=request.url.path, code=code, errors=errors,
    ).model_dump(mode="json", exclude_none=True)
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def field_errors(raw: Sequence[Any], prefix: tuple[str | int, ...] = ()) -> list[FieldError]:
    """pydantic/FastAPI error dicts -> FieldError, with ``prefix`` before each location."""
    return [
        FieldError(loc=[*prefix, *e.get("loc", ())], msg=str(e.get("msg", "")),
                   type=str(e.get("type", "")))
        for e in raw
    ]


def describe(errors: list[FieldError]) -> str:
    first = errors[0]
    where = ".".join(str(p) for p in first.loc if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.msg}{more}"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors())
    return problem_response(request, ValidationFailed(describe(errors), errors=errors))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return problem_response(request, NotFound(f"no route {request.url.path}"))
    if exc.status_code == 400:  # a JSON body that does not parse: as any bad field, 422
        error = FieldError(loc=["body"], msg=str(exc.detail), type="json_invalid")
        return problem_response(request, ValidationFailed(f"body: {exc.detail}",
                                                          errors=[error]))
    if exc.status_code == 405:
        return problem_response(request, MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}", headers=headers))
    code = ProblemCode.VALIDATION_ERROR if exc.status_code < 500 else ProblemCode.INTERNAL_ERROR
    return render_problem(request, exc.status_code, code, "HTTP error", str(exc.detail),
                          headers=headers)


async def _storage_down(request: Request, exc: Exception) -> JSONResponse:
    """The database or object store is unreachable: the client may retry (nothing of this
    request was recorded: a store call that raises commits nothing)."""
    log.warning("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(request, StorageUnavailable(
        "job storage is unreachable; retry shortly",
        headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)}))


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up mid-request: nobody reads the answer, and it is no server error
    (whoever noticed has logged one line, ``service/uploads.py``). No traceback."""
    return Response(status_code=400, headers={"Connection": "close"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(request, ApiError("an unexpected error occurred; it was logged"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreUnavailable, _storage_down)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


def problem_responses(*errors: type[ApiError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given errors (several per status are merged)."""
    by_status: dict[int, list[type[ApiError]]] = {}
    for error in errors:
        by_status.setdefault(error.status, []).append(error)
    return {
        status: {
            "model": Problem,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            "description": "; ".join(f"`{e.code.value}`: {e.title}" for e in group),
        }
        for status, group in sorted(by_status.items())
    }
