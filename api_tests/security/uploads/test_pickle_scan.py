"""The symbolic pickle scan (``core.uploads.pickle_scan``): pickles that would run code are
named and refused without running (the canary stays untouched); malformed ones are refused."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from api_tests.security import hostile as h
from api_tests.security.uploads.refusal import mlp_state_dict, rejected
from core.jobs.error_codes import JobErrorCode
from core.settings import Settings
from core.uploads.archive import pickle_globals


def test_shell_command_pickle_is_refused_naming_os_system(
    tmp_path: Path, settings: Settings, canary: Path
) -> None:
    path = h.shell_pickle_zip(tmp_path, canary)
    err = rejected(path, settings)
    assert (err.status, err.code, err.job_code) == (422, "invalid_upload", "unsafe_model")
    assert f"globals outside the tensor allow-list, which loading would import and call: " \
        f"{os.name}.system." in err.message
    assert "send a state_dict" in err.message and "safetensors" in err.message
    assert canary.read_text() == h.CANARY_TEXT


def test_exec_pickle_with_stack_global_is_refused(
    tmp_path: Path, settings: Settings, canary: Path
) -> None:
    path = h.exec_pickle_zip(tmp_path, canary)
    assert pickle_globals(path) == ["builtins.exec"]
    err = rejected(path, settings)
    assert err.job_code == JobErrorCode.UNSAFE_MODEL
    assert ": builtins.exec." in err.message
    assert canary.read_text() == h.CANARY_TEXT


def test_the_pickle_attacks_are_real_when_unpickled(tmp_path: Path, canary: Path) -> None:
    """Control: a plain unpickler runs them (so the canary checks mean something)."""
    for path in (h.shell_pickle_zip(tmp_path, canary), h.exec_pickle_zip(tmp_path, canary)):
        canary.write_text(h.CANARY_TEXT)
        pickle.loads(zipfile.ZipFile(path).read("archive/data.pkl"))  # noqa: S301
        assert canary.read_text().startswith("pwned")


def test_torch_weights_only_refuses_it_too(tmp_path: Path, canary: Path) -> None:
    """Defence in depth: the loader the engine uses behind our check refuses the same file."""
    path = h.shell_pickle_zip(tmp_path, canary)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(str(path), weights_only=True, mmap=False)
    assert canary.read_text() == h.CANARY_TEXT


def test_malformed_pickle(tmp_path: Path, settings: Settings) -> None:
    path = h.rewrite_zip(h.state_dict_file(tmp_path, mlp_state_dict()), tmp_path / "bad.pt",
                         {"data.pkl": b"\x80\x02\x85."})
    err = rejected(path, settings)
    assert err.status == 422 and err.message.startswith("data.pkl is not a valid pickle")


def test_every_opcode_has_exactly_one_handler() -> None:
    """The opcode table names real opcodes only (a typo would refuse valid pickles) and
    leaves none out but STOP, which ends the walk."""
    import pickletools

    from core.uploads.pickle_scan import _HANDLERS

    assert set(_HANDLERS) | {"STOP"} == {op.name for op in pickletools.opcodes}


def test_scan_lists_storages_and_tensors_of_a_state_dict(tmp_path: Path) -> None:
    from core.uploads.pickle_scan import StorageRecord, TensorRecord, scan_pickle

    path = h.state_dict_file(tmp_path, {"w": torch.ones(3, 4), "n": torch.tensor(7)})
    scan = scan_pickle(zipfile.ZipFile(path).read("sd/data.pkl"), "data.pkl")
    assert scan.storages == {"0": StorageRecord("torch.FloatStorage", 12),
                             "1": StorageRecord("torch.LongStorage", 1)}
    assert scan.tensors == [TensorRecord("0", 0, (3, 4), (4, 1), None),
                            TensorRecord("1", 0, (), (), None)]
