"""What LocalBlobStore adds to the BlobStore contract (test_blob_contract.py): its on-disk
layout, no temporary file left behind, and an emptied job folder removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.storage.blobs import LocalBlobStore
from core.storage.protocols import REPORT, UPLOAD


@pytest.fixture()
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "jobs")


def test_layout(blobs: LocalBlobStore) -> None:
    with blobs.writer("abc", UPLOAD) as f:
        f.write(b"x")
    assert blobs.local_path("abc", UPLOAD) == blobs.root / "abc" / UPLOAD
    assert [p.name for p in (blobs.root / "abc").iterdir()] == [UPLOAD]


def test_failed_write_leaves_no_temporary_file(blobs: LocalBlobStore) -> None:
    with pytest.raises(RuntimeError), blobs.writer("abc", REPORT) as f:
        f.write(b"partial")
        raise RuntimeError("disk full")
    assert list((blobs.root / "abc").iterdir()) == []


def test_delete_removes_folders_and_the_emptied_job_folder(blobs: LocalBlobStore) -> None:
    with blobs.writer("abc", UPLOAD) as f:
        f.write(b"x")
    (blobs.job_dir("abc") / "scratch").mkdir()
    blobs.delete_job_files("abc", keep=(UPLOAD,))
    assert [p.name for p in (blobs.root / "abc").iterdir()] == [UPLOAD]
    blobs.delete_job_files("abc")
    assert not (blobs.root / "abc").exists()
