"""LocalBlobStore: atomic writes, safe paths, deletion."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.blobs import LocalBlobStore
from core.store import REPORT, UPLOAD, model_file


@pytest.fixture()
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "jobs")


def test_write_read_size(blobs: LocalBlobStore) -> None:
    with blobs.writer("abc", UPLOAD) as f:
        f.write(b"hello ")
        f.write(b"world")
    assert blobs.exists("abc", UPLOAD)
    assert blobs.size("abc", UPLOAD) == 11
    with blobs.open("abc", UPLOAD) as f:
        assert f.read() == b"hello world"
    assert blobs.local_path("abc", UPLOAD) == blobs.root / "abc" / UPLOAD


def test_failed_write_leaves_nothing(blobs: LocalBlobStore) -> None:
    with pytest.raises(RuntimeError), blobs.writer("abc", REPORT) as f:
        f.write(b"partial")
        raise RuntimeError("disk full")
    assert not blobs.exists("abc", REPORT)
    assert list((blobs.root / "abc").iterdir()) == []  # no temporary file left behind


def test_rewrite_replaces_whole_file(blobs: LocalBlobStore) -> None:
    for content in (b"first version, long", b"second"):
        with blobs.writer("abc", REPORT) as f:
            f.write(content)
    with blobs.open("abc", REPORT) as f:
        assert f.read() == b"second"


@pytest.mark.parametrize("job_id", ["../x", "a/b", "", ".", "x" * 65])
def test_job_ids_cannot_escape(blobs: LocalBlobStore, job_id: str) -> None:
    with pytest.raises(ValueError):
        blobs.job_dir(job_id)


@pytest.mark.parametrize("name", ["../upload", "a/b", "..", ".tmp-upload", "", "/etc/passwd"])
def test_names_cannot_escape(blobs: LocalBlobStore, name: str) -> None:
    with pytest.raises(ValueError):
        blobs.exists("abc", name)


def test_put_file_copies_atomically(blobs: LocalBlobStore, tmp_path: Path) -> None:
    source = blobs.job_dir("abc") / "work.bin"
    source.write_bytes(b"\x00" * 3_000_000)
    blobs.put_file("abc", model_file("safetensors"), source)
    assert blobs.size("abc", "model.safetensors") == 3_000_000
    assert source.exists()


def test_delete_job_files_keeps_named(blobs: LocalBlobStore) -> None:
    for name in (UPLOAD, REPORT, model_file("torchscript")):
        with blobs.writer("abc", name) as f:
            f.write(b"x")
    (blobs.job_dir("abc") / "scratch").mkdir()
    blobs.delete_job_files("abc", keep=(REPORT,))
    assert [p.name for p in (blobs.root / "abc").iterdir()] == [REPORT]
    blobs.delete_job_files("abc")
    assert not (blobs.root / "abc").exists()
    blobs.delete_job_files("never-existed")  # no error
