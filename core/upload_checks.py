"""Checks of an upload that need no torch: run by the API at the door and again by the worker
before any deserialisation. (Owner: the hostile-uploads work, issue 4.)

PLACEHOLDER: only sniffs the format today; issue 4 fills in the archive and header audits.
"""

from __future__ import annotations

from pathlib import Path

from core.jobs import UploadFormat
from core.settings import Settings


class UploadRejected(Exception):
    """The upload is refused. ``status`` is the HTTP status the API answers (413, 415, 422);
    ``code`` a stable string (a ProblemCode at the door, a JobErrorCode value in the worker)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def sniff_format(head: bytes) -> UploadFormat | None:
    """Format from the first bytes: a zip archive (TorchScript or torch.save) or safetensors."""
    if head[:4] == b"PK\x03\x04":
        return UploadFormat.ZIP
    if len(head) >= 9 and head[8:9] == b"{":
        return UploadFormat.SAFETENSORS
    return None


def check_upload(path: Path, settings: Settings) -> UploadFormat:
    """Judge a stored upload without torch: return its format or raise ``UploadRejected``."""
    with path.open("rb") as f:
        head = f.read(16)
    fmt = sniff_format(head)
    if fmt is None:
        raise UploadRejected(
            415,
            "unsupported_media_type",
            "the model file is neither a zip archive (torch.jit.save / torch.save) nor "
            "safetensors",
        )
    return fmt
