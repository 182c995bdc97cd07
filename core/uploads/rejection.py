"""Why an upload is refused, in core's own words: a reason kind and a message.

The API turns a kind into an HTTP status and problem code (``service/errors.py``); a job that
finds the same problem fails with the kind's ``JobErrorCode``.
"""

from __future__ import annotations

from enum import StrEnum

from core.jobs.error_codes import JobErrorCode


class RejectKind(StrEnum):
    TOO_LARGE = "too_large"  # over a size, count or ratio cap
    NOT_A_MODEL = "not_a_model"  # neither a zip archive nor safetensors
    MALFORMED = "malformed"  # unreadable, inconsistent, or sizes that lie
    UNSAFE = "unsafe"  # loading would import or run code outside the allow-lists
    UNSUPPORTED = "unsupported"  # well formed, but tensors or objects we do not prune

    @property
    def job_code(self) -> JobErrorCode:
        """The code a job fails with when the worker finds this problem."""
        return _JOB_CODES[self]


_JOB_CODES = {
    RejectKind.TOO_LARGE: JobErrorCode.MODEL_TOO_LARGE,
    RejectKind.NOT_A_MODEL: JobErrorCode.INVALID_MODEL,
    RejectKind.MALFORMED: JobErrorCode.INVALID_MODEL,
    RejectKind.UNSAFE: JobErrorCode.UNSAFE_MODEL,
    RejectKind.UNSUPPORTED: JobErrorCode.UNSUPPORTED_MODEL,
}


class UploadRejected(Exception):
    """The upload is refused: ``kind`` says why, ``message`` what was found."""

    def __init__(self, kind: RejectKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def job_code(self) -> JobErrorCode:
        return self.kind.job_code


def too_large(message: str) -> UploadRejected:
    return UploadRejected(RejectKind.TOO_LARGE, message)


def malformed(message: str) -> UploadRejected:
    return UploadRejected(RejectKind.MALFORMED, message)


def unsafe(message: str) -> UploadRejected:
    return UploadRejected(RejectKind.UNSAFE, message)


def unsupported(message: str) -> UploadRejected:
    return UploadRejected(RejectKind.UNSUPPORTED, message)
