"""Zip structure and TorchScript load-time code (``core.uploads.archive``)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from api_tests.security import hostile as h
from api_tests.security.uploads.refusal import mlp_state_dict, rejected
from core.jobs.formats import ModelFormat
from core.settings import Settings
from core.uploads import check_upload


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
        "the zip archive is not a torch.save, torch.jit.save or torch.export.save archive "
        "(expected one top-level folder holding data.pkl or models/)"
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


# --- one "is this TorchScript?" sniffer -----------------------------------------------------------


def _old_door_said_torchscript(names: list[str]) -> bool:
    """The door's rule before the sniffers became one (kept here as the control)."""
    prefix = names[0].split("/", 1)[0]
    return f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names)


def _old_worker_said_torchscript(names: list[str]) -> bool:
    """The worker's rule before: any ``code/`` folder or ``constants.pkl``, at any depth."""
    return any("/code/" in f"/{n}" or n.rsplit("/", 1)[-1] == "constants.pkl" for n in names)


def _with_entries(src: Path, dst: Path, extra: dict[str, bytes]) -> Path:
    dst.write_bytes(src.read_bytes())
    with zipfile.ZipFile(dst, "a") as z:
        for name, data in extra.items():
            z.writestr(name, data)
    return dst


SETSTATE_SOURCE = b"class Evil(Module):\n  def __setstate__(self, state: int) -> None:\n    pass\n"


def test_load_hook_in_nested_code_is_refused_whatever_the_format(
    tmp_path: Path, settings: Settings
) -> None:
    """A state_dict with a ``__setstate__`` one folder down: the old door called it a
    state_dict and skipped the scan, the old loader called it TorchScript. Now the scan runs
    on every archive's code, and the file is refused."""
    src = h.state_dict_file(tmp_path, mlp_state_dict())
    path = _with_entries(src, tmp_path / "nested.pt",
                         {"sd/x/code/__torch__/evil.py": SETSTATE_SOURCE})
    names = zipfile.ZipFile(path).namelist()
    assert not _old_door_said_torchscript(names) and _old_worker_said_torchscript(names)
    err = rejected(path, settings)
    assert (err.status, err.code, err.job_code) == (422, "invalid_upload", "unsafe_model")
    assert "defines __setstate__ (in 'sd/x/code/__torch__/evil.py')" in err.message


def test_odd_depth_constants_is_a_state_dict_for_door_and_loader(tmp_path: Path) -> None:
    """``constants.pkl`` two folders down (and a harmless ``code/`` one down): torch.jit.load
    reads neither, torch.load reads the file as a state_dict. The old loader sent it to
    torch.jit.load; now door and loader give the one sniffer's answer, and the tensors are
    loaded weights-only and audited."""
    from worker.engine import registry
    from worker.engine.loading import load_model

    torch.manual_seed(0)
    state = registry.build("mnist_mlp").state_dict()
    src = h.state_dict_file(tmp_path, state)
    path = _with_entries(src, tmp_path / "odd.pt", {
        "sd/extra/x/constants.pkl": pickle.dumps((), protocol=2),
        "sd/extra/code/notes.py": b"# nothing to run\n",
    })
    names = zipfile.ZipFile(path).namelist()
    assert not _old_door_said_torchscript(names) and _old_worker_said_torchscript(names)
    settings = Settings()
    assert check_upload(path, settings) is ModelFormat.STATE_DICT
    loaded = load_model(path, "mnist_mlp", settings)
    assert loaded.format is ModelFormat.STATE_DICT
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in state.items())


def test_code_without_constants_is_torchscript_for_door_and_loader(tmp_path: Path) -> None:
    """The other way round: ``code/`` right under the prefix makes it TorchScript for both,
    so its pickle is not judged as a state_dict and the loader uses torch.jit.load (which
    refuses an archive without constants.pkl: an invalid model, nothing run)."""
    from worker.engine.errors import EngineError
    from worker.engine.loading import load_model

    script = h.save_script(torch.nn.Sequential(torch.nn.Linear(4, 3)), tmp_path / "ts.pt")
    path = tmp_path / "no_constants.pt"
    with zipfile.ZipFile(script) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/constants.pkl"):
                dst.writestr(info, src.read(info))
    settings = Settings()
    assert check_upload(path, settings) is ModelFormat.TORCHSCRIPT
    with pytest.raises(EngineError) as info:
        load_model(path, None, settings)
    assert info.value.code == "invalid_model"
    assert info.value.message.startswith("not a loadable TorchScript archive")


def test_overlapping_entries_are_refused(tmp_path: Path, settings: Settings) -> None:
    """Two central-directory records pointing into one local entry (the overlap behind the
    densest zip bombs): refused by name, whatever the format."""
    path = tmp_path / "overlap.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        z.writestr("archive/byteorder", "little")
    data = bytearray(path.read_bytes())
    second = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)
    data[second + 42 : second + 46] = (0).to_bytes(4, "little")  # its local header offset
    path.write_bytes(bytes(data))
    assert rejected(path, settings).message == (
        "the zip entries 'archive/data.pkl' and 'archive/byteorder' overlap")
