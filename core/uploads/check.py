"""The front: size, container sniffed from the first bytes, then the container's checks."""

from __future__ import annotations

from pathlib import Path

from core.jobs.formats import ModelFormat, UploadFormat
from core.settings import Settings
from core.uploads.archive import check_zip
from core.uploads.compressed import MAGIC, check_compressed
from core.uploads.rejection import RejectKind, UploadRejected, too_large
from core.uploads.safetensors_header import check_safetensors


def sniff_container(head: bytes) -> UploadFormat | None:
    """Container from the first bytes: a zip archive (TorchScript or torch.save) or
    safetensors (an 8-byte header length, then a JSON object) or the compressed layout (its
    magic, looked for first: its header length could put a '{' at byte 8)."""
    if head[:len(MAGIC)] == MAGIC:
        return UploadFormat.COMPRESSED
    if head[:4] == b"PK\x03\x04":
        return UploadFormat.ZIP
    if len(head) >= 9 and head[8:9] == b"{":
        return UploadFormat.SAFETENSORS
    return None


def check_upload(path: Path, settings: Settings) -> ModelFormat:
    """Judge a stored upload without torch: return its format or raise ``UploadRejected``."""
    size = path.stat().st_size
    if size > settings.max_upload_bytes:
        raise too_large(
            f"the model file has {size} bytes; the limit is {settings.max_upload_bytes} "
            "(PRUNER_MAX_UPLOAD_BYTES)"
        )
    with path.open("rb") as f:
        head = f.read(16)
    container = sniff_container(head)
    if container is None:
        raise UploadRejected(
            RejectKind.NOT_A_MODEL,
            "the model file is neither a zip archive (torch.jit.save / torch.save), "
            "safetensors, nor a compressed download",
        )
    if container is UploadFormat.ZIP:
        return check_zip(path, settings)
    if container is UploadFormat.COMPRESSED:
        return check_compressed(path, settings)
    return check_safetensors(path, settings)  # SAFETENSORS or SPARSE_SAFETENSORS
