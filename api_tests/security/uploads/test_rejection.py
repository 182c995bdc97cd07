"""Reason kinds (``core.uploads.rejection``) and the one table that turns them into HTTP
answers (``service.errors.UPLOAD_REJECTIONS``) and job codes."""

from __future__ import annotations

from api_tests.security.uploads.refusal import refusal
from core.uploads import RejectKind, UploadRejected
from service.errors import UPLOAD_REJECTIONS


def test_each_kind_has_one_http_answer_and_one_job_code() -> None:
    answers = {
        kind: refusal(UploadRejected(kind, "why"))[:3] for kind in RejectKind
    }
    assert answers == {
        RejectKind.TOO_LARGE: (413, "payload_too_large", "model_too_large"),
        RejectKind.NOT_A_MODEL: (415, "unsupported_media_type", "invalid_model"),
        RejectKind.MALFORMED: (422, "invalid_upload", "invalid_model"),
        RejectKind.UNSAFE: (422, "invalid_upload", "unsafe_model"),
        RejectKind.UNSUPPORTED: (422, "invalid_upload", "unsupported_model"),
    }
    assert set(UPLOAD_REJECTIONS) == set(RejectKind)
