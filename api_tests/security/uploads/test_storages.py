"""Storages and tensors against the zip entries and the caps (``core.uploads.storages``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from api_tests.security import hostile as h
from api_tests.security.uploads.refusal import rejected
from core.settings import Settings


def test_storage_whose_declared_size_lies(tmp_path: Path, settings: Settings) -> None:
    src = h.state_dict_file(tmp_path, {"w": torch.ones(12)})
    path = h.rewrite_zip(src, tmp_path / "lies.pt", {"/data/0": b"\x00" * 8})
    err = rejected(path, settings)
    assert (err.status, err.job_code) == (422, "invalid_model")
    assert err.message == (
        "storage 'data/0' declares 12 x 4 = 48 bytes but its entry 'sd/data/0' holds 8"
    )


def test_tensor_reaching_past_its_storage(tmp_path: Path, settings: Settings) -> None:
    src = h.state_dict_file(tmp_path, {"w": torch.ones(3, 4)})
    pkl = zipfile.ZipFile(src).read("sd/data.pkl")
    assert pkl.count(b"K\x03K\x04\x86") == 1  # size (3, 4) as BININT1 3, BININT1 4, TUPLE2
    lying = pkl.replace(b"K\x03K\x04\x86", b"K\x30K\x04\x86")  # claims (48, 4)
    path = h.rewrite_zip(src, tmp_path / "past.pt", {"data.pkl": lying})
    err = rejected(path, settings)
    assert err.message == (
        "a tensor of shape [48, 4] reaches element 191 of storage 'data/0', which holds 12"
    )


def test_tensor_with_huge_declared_shape(tmp_path: Path, settings: Settings) -> None:
    huge = torch.zeros(1).expand(100_000, 100_000)  # one stored element, 10^10 declared
    path = h.state_dict_file(tmp_path, {"w": huge})
    assert path.stat().st_size < 10_000
    err = rejected(path, settings)
    assert (err.status, err.job_code) == (413, "model_too_large")
    assert err.message == (
        "a tensor on storage 'data/0' declares shape [100000, 100000] = 10000000000 elements; "
        "the limit is 200000000 (PRUNER_MAX_TENSOR_ELEMENTS)"
    )


def test_parameter_and_tensor_count_caps(tmp_path: Path) -> None:
    path = h.state_dict_file(tmp_path, {"a": torch.zeros(60), "b": torch.zeros(50)})
    err = rejected(path, Settings(max_parameters=100))
    assert err.message == (
        "the archive holds 110 tensor elements; the limit is 100 (PRUNER_MAX_PARAMETERS)"
    )
    err = rejected(path, Settings(max_tensors=1))
    assert err.message == "the archive holds 2 tensors; the limit is 1 (PRUNER_MAX_TENSORS)"
