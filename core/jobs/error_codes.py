"""Stable error codes: the ones a failed job carries, and the ones HTTP problems carry.

These strings are part of the public API (README and OpenAPI list them); never rename one.
"""

from __future__ import annotations

from enum import StrEnum


class JobErrorCode(StrEnum):
    """``error.code`` of a job that ended ``failed``; ``error.message`` says what was found.

    invalid_model: not a readable TorchScript / state_dict / safetensors / .pt2 file (truncated,
    corrupt, storage sizes that lie). unsafe_model: pickle globals, TorchScript or .pt2
    operators outside the allow-list (file, process, thread or Python-runtime access, a custom
    __setstate__), each named. unsupported_model: a whole pickled nn.Module, or tensors that are
    not float16/bfloat16/float32/float64 weights or integer buffers (complex, quantized, sparse,
    meta, float8). model_too_large: over the archive, tensor or parameter caps.
    invalid_weights: NaN or Inf values. unknown_architecture / architecture_required /
    architecture_mismatch: the spec's architecture and the state_dict's keys and shapes.
    incompatible_model: fails the MNIST I/O contract ((N, 1, 28, 28) in, (N, 10) out).
    invalid_spec, no_prunable_tensors: the spec cannot apply to this model.
    dataset_unavailable, device_unavailable: the worker lacks MNIST or the asked device.
    budget_unreachable: a search found no tried amount within its accuracy budget (the message
    names the best trial). resource_limit: the job process hit its memory, CPU-time or
    file-size limit. timeout: past the wall-clock limit. crashed: the job process died on
    every allowed attempt. internal_error: a bug on our side.
    """

    INVALID_MODEL = "invalid_model"  # not a readable TorchScript/state_dict/safetensors file
    UNSAFE_MODEL = "unsafe_model"  # pickle globals or TorchScript ops outside the allow-list
    UNSUPPORTED_MODEL = "unsupported_model"  # e.g. a whole pickled nn.Module, disallowed dtype
    MODEL_TOO_LARGE = "model_too_large"  # over the parameter/tensor/archive caps
    INVALID_WEIGHTS = "invalid_weights"  # NaN or Inf weights
    UNKNOWN_ARCHITECTURE = "unknown_architecture"  # spec names no registry architecture
    ARCHITECTURE_REQUIRED = "architecture_required"  # state_dict upload without architecture
    ARCHITECTURE_MISMATCH = "architecture_mismatch"  # missing/unexpected keys, wrong shapes
    INCOMPATIBLE_MODEL = "incompatible_model"  # fails the MNIST I/O contract
    INVALID_SPEC = "invalid_spec"  # valid JSON, but impossible for this model (amount > n, ...)
    NO_PRUNABLE_TENSORS = "no_prunable_tensors"  # include/exclude leave nothing to prune
    DATASET_UNAVAILABLE = "dataset_unavailable"  # MNIST missing at the configured root
    DEVICE_UNAVAILABLE = "device_unavailable"  # spec asks for CUDA on a CPU-only worker
    RESOURCE_LIMIT = "resource_limit"  # job process hit its memory/CPU limit
    BUDGET_UNREACHABLE = "budget_unreachable"  # search: no tried amount within the budget
    TARGET_UNREACHABLE = "target_unreachable"  # target: no candidate met constraint and drop
    TIMEOUT = "timeout"  # job exceeded its wall-clock limit
    CRASHED = "crashed"  # job process died (signal) on every allowed attempt
    INTERNAL_ERROR = "internal_error"  # a bug on our side; the message says what


class ProblemCode(StrEnum):
    """``code`` of an RFC 9457 problem+json HTTP error."""

    NOT_FOUND = "not_found"
    VALIDATION_ERROR = "validation_error"  # 422: spec or form fields
    PAYLOAD_TOO_LARGE = "payload_too_large"  # 413
    REQUEST_TIMEOUT = "request_timeout"  # 408: an upload too slow, or longer than allowed
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415: not a zip archive nor safetensors
    INVALID_UPLOAD = "invalid_upload"  # 422: archive structure/safetensors header refused
    JOB_NOT_FINISHED = "job_not_finished"  # 409: report/model of an unfinished job
    JOB_FINISHED = "job_finished"  # 409: cancel of a finished job
    NO_MODEL = "no_model"  # 409: model of a failed/cancelled job
    GONE = "gone"  # 410: files expired by retention
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"  # 422: same key, different body
    QUEUE_FULL = "queue_full"  # 429
    BROKER_UNAVAILABLE = "broker_unavailable"  # 503 with Retry-After
    STORAGE_UNAVAILABLE = "storage_unavailable"  # 503 + Retry-After: database/object store down
    INTERNAL_ERROR = "internal_error"  # 500
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    NOT_READY = "not_ready"  # 503 from /readyz: a dependency check failed (see `checks`)
    INSUFFICIENT_STORAGE = "insufficient_storage"  # 507: no room left to store the upload
    UNAUTHORIZED = "unauthorized"  # 401: no key, or a malformed, unknown or revoked one
    FORBIDDEN = "forbidden"  # 403: a valid key without the route's scope
    CROSS_ORIGIN = "cross_origin"  # 403: a cookie-signed write from another origin
    CONFLICT = "conflict"  # 409: e.g. a tenant that already exists
    QUOTA_QUEUED = "quota_queued"  # 429: the tenant's queued-jobs limit
    QUOTA_STORAGE = "quota_storage"  # 429: the tenant's stored-bytes limit
    QUOTA_RATE = "quota_rate"  # 429: the tenant's submissions-per-minute limit
