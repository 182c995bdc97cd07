"""sha256 of a stored job file, computed once and kept beside it (``<name>.sha256``)."""

from __future__ import annotations

import hashlib

from core.store import BlobStore

CHUNK = 1024 * 1024


def file_sha256(blobs: BlobStore, job_id: str, name: str) -> str:
    """The file's sha256; cached in a sidecar so each download does not re-hash the model.
    Job files never change once written (new outputs get new names), so the cache is safe."""
    sidecar = f"{name}.sha256"
    if blobs.exists(job_id, sidecar):
        with blobs.open(job_id, sidecar) as f:
            cached = f.read(64).decode("ascii", "replace")
        if len(cached) == 64:
            return cached
    digest = hashlib.sha256()
    with blobs.open(job_id, name) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    sha = digest.hexdigest()
    with blobs.writer(job_id, sidecar) as out:
        out.write(sha.encode())
    return sha
