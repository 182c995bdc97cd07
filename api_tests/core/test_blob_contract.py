"""The ``BlobStore`` contract (core/storage/protocols.py), run against every backend: atomic writes,
safe names, put_file, deletion, and the sha256 kept beside a stored file.

A new backend (S3...) joins by one more entry in ``BACKENDS``: a function that makes an
empty store under a temporary folder (or bucket prefix)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from core.settings import Settings
from core.storage.blobs import LocalBlobStore
from core.storage.blobs_s3 import S3BlobStore
from core.storage.digest import stored_sha256
from core.storage.protocols import REPORT, UPLOAD, BlobStore, model_file


def _s3(request: pytest.FixtureRequest, tmp: Path) -> BlobStore:
    values = request.getfixturevalue("s3_server").settings()
    return S3BlobStore.from_settings(Settings.of(data_dir=tmp / "scratch", **values))


# Each factory gets the test's request (for session fixtures such as ``s3_server``) and its
# tmp_path.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], BlobStore]] = {
    "local": lambda _, tmp: LocalBlobStore(tmp / "jobs"),
    "s3": _s3,
}


@pytest.fixture(params=sorted(BACKENDS))
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    return BACKENDS[request.param](request, tmp_path)


def test_write_read_size(blobs: BlobStore) -> None:
    with blobs.writer("abc", UPLOAD) as f:
        f.write(b"hello ")
        f.write(b"world")
    assert blobs.exists("abc", UPLOAD)
    assert blobs.size("abc", UPLOAD) == 11
    with blobs.open("abc", UPLOAD) as f:
        assert f.read() == b"hello world"
    assert blobs.local_path("abc", UPLOAD).read_bytes() == b"hello world"
    assert not blobs.exists("abc", REPORT) and not blobs.exists("other", UPLOAD)


def test_failed_write_leaves_nothing(blobs: BlobStore) -> None:
    with pytest.raises(RuntimeError), blobs.writer("abc", REPORT) as f:
        f.write(b"partial")
        raise RuntimeError("disk full")
    assert not blobs.exists("abc", REPORT)


def test_rewrite_replaces_whole_file(blobs: BlobStore) -> None:
    for content in (b"first version, long", b"second"):
        with blobs.writer("abc", REPORT) as f:
            f.write(content)
    with blobs.open("abc", REPORT) as f:
        assert f.read() == b"second"


@pytest.mark.parametrize("job_id", ["../x", "a/b", "", ".", "x" * 65])
def test_job_ids_cannot_escape(blobs: BlobStore, job_id: str) -> None:
    with pytest.raises(ValueError):
        blobs.job_dir(job_id)
    with pytest.raises(ValueError):
        blobs.exists(job_id, UPLOAD)


@pytest.mark.parametrize("name", ["../upload", "a/b", "..", ".tmp-upload", "", "/etc/passwd"])
def test_names_cannot_escape(blobs: BlobStore, name: str) -> None:
    with pytest.raises(ValueError):
        blobs.exists("abc", name)


def test_put_file_copies_atomically(blobs: BlobStore) -> None:
    source = blobs.job_dir("abc") / "work.bin"
    source.write_bytes(b"\x00" * 3_000_000)
    blobs.put_file("abc", model_file("safetensors"), source)
    assert blobs.size("abc", "model.safetensors") == 3_000_000
    assert source.exists()


def test_delete_job_files_keeps_named(blobs: BlobStore) -> None:
    for name in (UPLOAD, REPORT, model_file("torchscript")):
        with blobs.writer("abc", name) as f:
            f.write(b"x")
    blobs.delete_job_files("abc", keep=(REPORT,))
    assert [blobs.exists("abc", n) for n in (UPLOAD, REPORT, model_file("torchscript"))] == [
        False, True, False]
    blobs.delete_job_files("abc")
    assert not blobs.exists("abc", REPORT)
    blobs.delete_job_files("never-existed")  # no error


def test_stored_sha256_is_computed_once_and_kept(blobs: BlobStore) -> None:
    data = b"model bytes " * 200_000  # over one 1 MiB chunk
    with blobs.writer("abc", UPLOAD) as f:
        f.write(data)
    sha = hashlib.sha256(data).hexdigest()
    assert stored_sha256(blobs, "abc", UPLOAD) == sha
    with blobs.open("abc", f"{UPLOAD}.sha256") as f:
        assert f.read() == sha.encode()
    with blobs.writer("abc", f"{UPLOAD}.sha256") as f:  # the sidecar is what is read back
        f.write(b"f" * 64)
    assert stored_sha256(blobs, "abc", UPLOAD) == "f" * 64


def test_read_streams_whole_files_and_ranges(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB chunk
    with blobs.writer("abc", REPORT) as f:
        f.write(data)
    blobs.drop_local_copies("abc")
    assert b"".join(blobs.read("abc", REPORT)) == data
    chunks = list(blobs.read("abc", REPORT))
    assert len(chunks) == 2 and all(len(c) <= 1 << 20 for c in chunks)
    assert b"".join(blobs.read("abc", REPORT, 10, 19)) == data[10:20]
    assert b"".join(blobs.read("abc", REPORT, len(data) - 3)) == data[-3:]
    assert b"".join(blobs.read("abc", REPORT, 1_000_000, 1_100_000)) == data[1_000_000:1_100_001]
    with pytest.raises(FileNotFoundError):
        blobs.read("abc", UPLOAD)  # raised at the call, before any byte


def test_drop_local_copies_keeps_the_stored_files(blobs: BlobStore) -> None:
    with blobs.writer("abc", UPLOAD) as f:
        f.write(b"upload bytes")
    assert blobs.local_path("abc", UPLOAD).read_bytes() == b"upload bytes"
    blobs.drop_local_copies("abc")
    if isinstance(blobs, S3BlobStore):  # the scratch copy is gone from this host...
        assert not (blobs.cache / "abc").exists()
    assert blobs.exists("abc", UPLOAD)  # ...the stored file is not
    with blobs.open("abc", UPLOAD) as f:
        assert f.read() == b"upload bytes"
    if isinstance(blobs, S3BlobStore):  # open streams: it leaves no copy either
        assert not (blobs.cache / "abc").exists()
    assert blobs.local_path("abc", UPLOAD).read_bytes() == b"upload bytes"
    blobs.drop_local_copies("never-existed")  # no error


def test_a_file_past_the_multipart_threshold_round_trips(blobs: BlobStore) -> None:
    """On S3 a file over ``MULTIPART_THRESHOLD`` goes up as a multipart upload: it reads back
    whole, byte for byte."""
    from core.storage.blobs_s3 import MULTIPART_THRESHOLD

    chunk = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB of varied bytes
    size = MULTIPART_THRESHOLD + 3 * len(chunk) + 17
    digest = hashlib.sha256()
    with blobs.writer("bigjob", UPLOAD) as f:
        written = 0
        while written < size:
            piece = chunk[: size - written]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
    assert blobs.size("bigjob", UPLOAD) == size
    if isinstance(blobs, S3BlobStore):  # read the object itself, not the writer's local copy
        shutil.rmtree(blobs.cache / "bigjob")
    back = hashlib.sha256()
    with blobs.open("bigjob", UPLOAD) as f:
        while piece := f.read(1 << 20):
            back.update(piece)
    assert back.hexdigest() == digest.hexdigest()
