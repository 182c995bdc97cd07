"""sha256 of files, streamed in 1 MiB chunks: the one helper every layer uses.

``sha256_stream`` hashes any binary stream (and lets the caller measure the same chunks in
the same pass); ``stored_sha256`` hashes a stored job file once and keeps the digest beside
it. Uploads are hashed while they stream in (service/uploads.py feeds hashlib directly: the
bytes are never read back).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from core.storage.protocols import BlobStore

CHUNK = 1 << 20


def sha256_stream(stream: BinaryIO, on_chunk: Callable[[bytes], object] | None = None) -> str:
    """Read ``stream`` to its end; the hex sha256 of what was read. ``on_chunk`` sees every
    chunk too, for a second measure in the same pass (size, compressed size)."""
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        if on_chunk is not None:
            on_chunk(chunk)
    return digest.hexdigest()


def sha256_file(path: Path, on_chunk: Callable[[bytes], object] | None = None) -> str:
    with path.open("rb") as f:
        return sha256_stream(f, on_chunk)


def stored_sha256(blobs: BlobStore, job_id: str, name: str) -> str:
    """A stored job file's sha256, cached in a sidecar (``<name>.sha256``) so each download
    does not re-hash the model. Job files never change once written (new outputs get new
    names), so the cache is safe."""
    sidecar = f"{name}.sha256"
    if blobs.exists(job_id, sidecar):
        with blobs.open(job_id, sidecar) as f:
            cached = f.read(64).decode("ascii", "replace")
        if len(cached) == 64:
            return cached
    with blobs.open(job_id, name) as f:
        sha = sha256_stream(f)
    with blobs.writer(job_id, sidecar) as out:
        out.write(sha.encode())
    return sha
