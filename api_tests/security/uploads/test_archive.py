"""Zip structure and TorchScript load-time code (``core.uploads.archive``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from api_tests.security import hostile as h
from api_tests.security.uploads.refusal import rejected
from core.settings import Settings


def test_torchscript_setstate_is_refused_before_loading(
    tmp_path: Path, settings: Settings, canary: Path
) -> None:
    path = h.torchscript_setstate_hook(tmp_path, h.overwrite_canary_code(canary))
    err = rejected(path, settings)
    assert (err.status, err.job_code) == (422, "unsafe_model")
    assert "defines __setstate__ (in 'plain/code/__torch__/api_tests/security/hostile.py')" \
        in err.message
    assert canary.read_text() == h.CANARY_TEXT


def test_setstate_really_runs_at_load(tmp_path: Path, canary: Path) -> None:
    """Why the check above exists: torch.jit.load executes __setstate__, here reading the
    canary's first four bytes into the error message (an exfiltration path)."""
    payload = (
        f"    leak = torch.from_file({str(canary)!r}, False, 4, dtype=0)\n"
        "    ops.prim.RaiseException(str(torch.sum(leak)))\n"
    )
    path = h.torchscript_setstate_hook(tmp_path, payload)
    with pytest.raises(Exception) as info:  # noqa: B017 - torch.jit.Error
        torch.jit.load(str(path))
    assert str(sum(b"cana")) in str(info.value)  # 403: the bytes were read at load time


def test_zip_bomb_is_refused_by_ratio(tmp_path: Path, settings: Settings) -> None:
    err = rejected(h.zip_bomb(tmp_path), settings)
    assert (err.status, err.code, err.job_code) == (413, "payload_too_large", "model_too_large")
    assert "the zip entry 'archive/data/0' expands" in err.message
    assert "-> 16777216 bytes); the limit is 100x (PRUNER_MAX_COMPRESSION_RATIO)" in err.message


def test_total_uncompressed_size_cap(tmp_path: Path) -> None:
    settings = Settings(max_uncompressed_bytes=1000)
    path = h.state_dict_file(tmp_path, {"w": torch.zeros(1000)})
    err = rejected(path, settings)
    assert err.status == 413
    assert "uncompressed bytes; the limit is 1000 (PRUNER_MAX_UNCOMPRESSED_BYTES)" in err.message


def test_thousands_of_entries(tmp_path: Path, settings: Settings) -> None:
    err = rejected(h.many_entries(tmp_path, 10_000), settings)  # + data.pkl = 10001
    assert err.status == 413
    assert err.message == (
        "the zip archive has 10001 entries; the limit is 10000 (PRUNER_MAX_ARCHIVE_ENTRIES)"
    )


@pytest.mark.parametrize(
    "name",
    ["archive/../../../etc/cron.d/x", "/etc/passwd", "archive\\..\\evil", "C:/x", "archive/a/../b"],
)
def test_path_traversal_and_absolute_names(tmp_path: Path, settings: Settings, name: str) -> None:
    path = h.zip_with_entry(tmp_path, name)
    assert name in zipfile.ZipFile(path).namelist()
    err = rejected(path, settings)
    assert (err.status, err.code) == (422, "invalid_upload")
    assert err.message == (
        f"the zip entry name {name!r} is absolute, climbs out with '..', or holds a "
        "backslash or NUL"
    )


def test_duplicate_and_encrypted_entries(tmp_path: Path, settings: Settings) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        dup = h.duplicate_entry_zip(tmp_path)
    assert rejected(dup, settings).message == (
        "the zip archive holds the entry 'archive/data.pkl' twice"
    )
    enc = rejected(h.encrypted_entry_zip(tmp_path), settings)
    assert (enc.status, enc.message) == (422, "the zip entry 'archive/secret' is encrypted")


def test_zip_that_is_not_a_torch_archive(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    assert rejected(path, settings).message == (
        "the zip archive is not a torch.save or torch.jit.save archive (expected one "
        "top-level folder holding data.pkl)"
    )


def test_torchscript_code_size_is_bounded(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.uploads.archive as checks

    script = h.save_script(torch.nn.Sequential(torch.nn.Linear(4, 3)), tmp_path / "ts.pt")
    code = sum(i.file_size for i in zipfile.ZipFile(script).infolist()
               if "/code/" in i.filename and not i.filename.endswith(".debug_pkl"))
    monkeypatch.setattr(checks, "MAX_CODE_BYTES", code - 1)
    err = rejected(script, settings)
    assert (err.status, err.message) == (
        413, f"the TorchScript archive holds {code} bytes of code; at most {code - 1} are accepted"
    )


def test_entry_count_is_judged_before_zipfile_parses_the_directory(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip64 archive with 70 000 entries is refused from its end-of-directory record: an
    upload could hold millions, and zipfile would build an object for each."""
    import core.uploads.archive as checks

    path = h.many_entries(tmp_path, 69_999)
    monkeypatch.setattr(checks.zipfile, "ZipFile", None)  # any use would raise TypeError
    err = rejected(path, settings)
    assert err.message == (
        "the zip archive has 70000 entries; the limit is 10000 (PRUNER_MAX_ARCHIVE_ENTRIES)"
    )
