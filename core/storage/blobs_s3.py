"""Job files in S3-compatible object storage: the ``BlobStore`` of ``core/storage/protocols.py`` for
several hosts (``PRUNER_BLOB_URL=s3://bucket/prefix``; AWS S3, MinIO, SeaweedFS...).

Objects are ``<prefix>/<job id>/<name>``. Nothing is shared between hosts but the bucket:
a process keeps a local copy of the files it wrote or read under its own scratch folder
(``<data_dir>/blob-cache/<job id>/``) while it works on them, so the API checks an upload
from a local file and a worker reads its input and writes its outputs locally, then uploads
them; each drops its copies when done (``drop_local_copies``). Downloads stream from the
object store through ``read`` (ranged GETs: Range, ETag, 304 as on the local store), with no
copy on the API host.

- ``writer`` streams into a local temporary file (never the whole file in memory) and
  uploads it when the block exits; boto3's transfer manager switches to a multipart upload
  past ``MULTIPART_THRESHOLD``. An object appears whole or not at all (S3 PUTs and completed
  multipart uploads are atomic), and a failed upload raises ``StoreUnavailable``.
- With ``s3_presign_s`` set, model downloads answer a 307 redirect to a presigned URL, so
  the bytes go from the object store to the client, not through the API.
- Job files never change once written except the report and sidecars, which are rewritten
  whole; a cached copy is refreshed from the object store when its size differs.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.settings import Settings
from core.storage.protocols import BlobStore, StoreUnavailable

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_TMP_PREFIX = ".tmp-"
MULTIPART_THRESHOLD = 64 * 1024 * 1024
READ_CHUNK = 1024 * 1024
TRANSFER = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                          multipart_chunksize=16 * 1024 * 1024, max_concurrency=4)
# A store that is down must fail a request in seconds (503), not after minutes of retries.
CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2},
                       s3={"addressing_style": "path"})
_S3_ERRORS = (BotoCoreError, ClientError)


def split_blob_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, "some/prefix")."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def _missing(exc: ClientError) -> bool:
    """Whether S3 answered that the object does not exist (HEAD: 404; GET: NoSuchKey)."""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _body_chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(READ_CHUNK)
    finally:
        body.close()


class S3BlobStore:
    """``BlobStore`` on an S3 bucket, with a per-process local cache."""

    files_are_local = False

    def __init__(self, client: Any, bucket: str, prefix: str, cache: Path,
                 presign_s: int = 0) -> None:
        self.client = client
        self.presign_s = presign_s
        self.bucket = bucket
        self.prefix = prefix
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        bucket, prefix = split_blob_url(settings.blob_url)
        client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=settings.s3_secret_access_key or None, config=CLIENT_CONFIG,
        )
        return cls(client, bucket, prefix, settings.data_dir / "blob-cache",
                   settings.s3_presign_s)

    # --- names --------------------------------------------------------------------------

    def _check(self, job_id: str, name: str | None = None) -> None:
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        if name is not None and (not _NAME.fullmatch(name) or name.startswith(_TMP_PREFIX)):
            raise ValueError(f"invalid job file name {name!r}")

    def _key(self, job_id: str, name: str) -> str:
        self._check(job_id, name)
        return f"{self.prefix}/{job_id}/{name}" if self.prefix else f"{job_id}/{name}"

    def _job_prefix(self, job_id: str) -> str:
        self._check(job_id)
        return f"{self.prefix}/{job_id}/" if self.prefix else f"{job_id}/"

    def _cached(self, job_id: str, name: str) -> Path:
        self._check(job_id, name)
        return self.cache / job_id / name

    # --- BlobStore ----------------------------------------------------------------------

    @contextmanager
    def writer(self, job_id: str, name: str) -> Iterator[BinaryIO]:
        key, target = self._key(job_id, name), self._cached(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + name + ".", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w+b") as f:
                yield f
                f.flush()
                f.seek(0)
                self._upload(f, key)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def _upload(self, f: BinaryIO, key: str) -> None:
        try:
            self.client.upload_fileobj(f, self.bucket, key, Config=TRANSFER)
        except _S3_ERRORS as exc:
            raise StoreUnavailable(f"object store: upload of {key} failed: {exc}") from exc

    def _head(self, job_id: str, name: str) -> int | None:
        """The object's size, or None when there is none."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(job_id, name))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise StoreUnavailable(f"object store: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"object store: {exc}") from exc
        return int(head["ContentLength"])

    def open(self, job_id: str, name: str) -> BinaryIO:
        """The object's body, streamed (a file-like ``StreamingBody``; no local copy)."""
        body: BinaryIO = self.read_body(job_id, name)
        return body

    def read_body(self, job_id: str, name: str, wanted: str | None = None) -> Any:
        """The GET's streaming body (``wanted``: a Range header value); missing objects raise
        ``FileNotFoundError``, an unreachable store ``StoreUnavailable``."""
        extra = {} if wanted is None else {"Range": wanted}
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(job_id, name),
                                          **extra)["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(f"{job_id}/{name}") from exc
            raise StoreUnavailable(f"object store: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"object store: {exc}") from exc

    def exists(self, job_id: str, name: str) -> bool:
        return self._head(job_id, name) is not None

    def size(self, job_id: str, name: str) -> int:
        size = self._head(job_id, name)
        if size is None:
            raise FileNotFoundError(f"{job_id}/{name}")
        return size

    def local_path(self, job_id: str, name: str) -> Path:
        """The cached copy, downloaded (streamed to a temp file, then renamed) when absent or
        of another size than the object."""
        target = self._cached(job_id, name)
        size = self._head(job_id, name)
        if size is None:
            raise FileNotFoundError(f"{job_id}/{name}")
        if target.is_file() and target.stat().st_size == size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + name + ".", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                self.client.download_fileobj(self.bucket, self._key(job_id, name), f,
                                             Config=TRANSFER)
            os.replace(tmp_name, target)
        except _S3_ERRORS as exc:
            raise StoreUnavailable(f"object store: download failed: {exc}") from exc
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        return target

    def read(
        self, job_id: str, name: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """One ranged GET, sent before this returns; the body is read in 1 MiB chunks."""
        wanted = f"bytes={start}-{'' if end is None else end}"
        return _body_chunks(self.read_body(job_id, name, wanted))

    def drop_local_copies(self, job_id: str) -> None:
        self._check(job_id)
        shutil.rmtree(self.cache / job_id, ignore_errors=True)

    def local_copies(self) -> dict[str, Path]:
        return {p.name: p for p in self.cache.iterdir()
                if p.is_dir() and _JOB_ID.fullmatch(p.name)}

    def job_dir(self, job_id: str) -> Path:
        self._check(job_id)
        path = self.cache / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_file(self, job_id: str, name: str, source: Path) -> None:
        with source.open("rb") as f:
            self._upload(f, self._key(job_id, name))
        target = self._cached(job_id, name)
        if target != source:
            target.unlink(missing_ok=True)  # a stale cached copy must not be served

    def delete_job_files(self, job_id: str, keep: tuple[str, ...] = ()) -> None:
        prefix = self._job_prefix(job_id)
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix)
            doomed = [{"Key": o["Key"]} for page in pages for o in page.get("Contents", ())
                      if o["Key"][len(prefix):] not in keep]
            for start in range(0, len(doomed), 1000):  # DeleteObjects takes 1000 at most
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": doomed[start:start + 1000]})
        except _S3_ERRORS as exc:
            raise StoreUnavailable(f"object store: delete failed: {exc}") from exc
        folder = self.cache / job_id
        for entry in folder.iterdir() if folder.is_dir() else ():
            if entry.name not in keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)

    def download_url(self, job_id: str, name: str, filename: str) -> str | None:
        """A presigned GET valid ``presign_s`` seconds (None when presigning is off); it
        names the file the way the API would (Content-Disposition)."""
        if self.presign_s <= 0:
            return None
        url: str = self.client.generate_presigned_url(
            "get_object", ExpiresIn=self.presign_s,
            Params={"Bucket": self.bucket, "Key": self._key(job_id, name),
                    "ResponseContentDisposition": f'attachment; filename="{filename}"'})
        return url

    def ping(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except _S3_ERRORS as exc:
            raise StoreUnavailable(f"object store: bucket {self.bucket}: {exc}") from exc


if TYPE_CHECKING:
    _conforms: type[BlobStore] = S3BlobStore  # mypy proves the Protocol is met
