"""Job files on a local (or shared, mounted) directory: the ``BlobStore`` of
``core/storage/protocols.py``.

Layout: ``<data_dir>/jobs/<job id>/<name>``. Job ids are ours (``new_job_id``) and names
are our constants (``UPLOAD``, ``REPORT``, ``model_file(fmt)``); both are still checked, so
no caller mistake can turn into a path outside the job's folder.

Every write is atomic and durable: the bytes go to a temporary file in the same folder,
are fsynced, and ``os.replace`` moves them under their name (then the folder is fsynced),
so a reader sees the whole file or none, even after a crash.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from core.settings import Settings
from core.storage.protocols import BlobStore, StoreUnavailable

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_TMP_PREFIX = ".tmp-"
COPY_CHUNK = 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(f: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    with f:
        f.seek(start)
        left = None if end is None else end - start + 1
        while left is None or left > 0:
            chunk = f.read(COPY_CHUNK if left is None else min(COPY_CHUNK, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


class LocalBlobStore:
    """``BlobStore`` on a local directory shared by the API and the workers."""

    files_are_local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBlobStore:
        return cls(settings.data_dir / "jobs")

    def _dir(self, job_id: str) -> Path:
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / job_id

    def _path(self, job_id: str, name: str) -> Path:
        if not _NAME.fullmatch(name) or name.startswith(_TMP_PREFIX):
            raise ValueError(f"invalid job file name {name!r}")
        return self._dir(job_id) / name

    @contextmanager
    def writer(self, job_id: str, name: str) -> Iterator[BinaryIO]:
        target = self._path(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + name + ".", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    def open(self, job_id: str, name: str) -> BinaryIO:
        return self._path(job_id, name).open("rb")

    def exists(self, job_id: str, name: str) -> bool:
        return self._path(job_id, name).is_file()

    def size(self, job_id: str, name: str) -> int:
        return self._path(job_id, name).stat().st_size

    def local_path(self, job_id: str, name: str) -> Path:
        return self._path(job_id, name)

    def read(
        self, job_id: str, name: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        f = self._path(job_id, name).open("rb")  # opened now: a missing file raises here
        return _chunks(f, start, end)

    def drop_local_copies(self, job_id: str) -> None:
        """Nothing to drop: these files are the store."""

    def local_copies(self) -> dict[str, Path]:
        return {}  # these files are the store, not copies

    def job_dir(self, job_id: str) -> Path:
        path = self._dir(job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_file(self, job_id: str, name: str, source: Path) -> None:
        """Copy ``source`` in under ``name`` atomically; ``source`` is left where it is."""
        with source.open("rb") as src, self.writer(job_id, name) as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)

    def delete_job_files(self, job_id: str, keep: tuple[str, ...] = ()) -> None:
        folder = self._dir(job_id)
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if not keep:
            try:
                folder.rmdir()
            except OSError:
                pass  # a file appeared meanwhile (a late writer); the next sweep takes it

    def download_url(self, job_id: str, name: str, filename: str) -> str | None:
        return None  # only the API can serve a local file

    def ping(self) -> None:
        probe = self.root / f"{_TMP_PREFIX}ping-{os.getpid()}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StoreUnavailable(f"{self.root} is not writable: {exc.strerror or exc}") from exc


if TYPE_CHECKING:
    _conforms: type[BlobStore] = LocalBlobStore  # mypy proves the Protocol is met
