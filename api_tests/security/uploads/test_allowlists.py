"""What a state_dict may name (``core.uploads.allowlists``): the allow-list is exactly what
torch.save writes; whole pickled modules and tensor kinds we do not prune are refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from api_tests.security import hostile as h
from api_tests.security.uploads.refusal import rejected
from core.jobs.formats import ModelFormat
from core.settings import Settings
from core.uploads import check_upload
from core.uploads.allowlists import ACCEPTED_DTYPES, ALLOWED_STATE_DICT_GLOBALS
from core.uploads.archive import pickle_globals


def test_state_dict_allow_list_is_what_torch_save_writes(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    path = h.state_dict_file(tmp_path, model.state_dict())  # type: ignore[arg-type]
    assert pickle_globals(path) == [
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage",
        "torch.LongStorage",
    ]
    assert set(pickle_globals(path)) <= ALLOWED_STATE_DICT_GLOBALS


def test_whole_pickled_module_is_refused_with_what_to_send(
    tmp_path: Path, settings: Settings
) -> None:
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), str(path))
    err = rejected(path, settings)
    assert (err.status, err.code, err.job_code) == (422, "invalid_upload", "unsupported_model")
    assert err.message.startswith("the file is a whole pickled model (torch.save(model))")
    assert "torch.nn.modules.container.Sequential" in err.message
    assert "torch.nn.modules.linear.Linear" in err.message
    assert "torch.save(model.state_dict())" in err.message
    assert "torch.jit.save(torch.jit.script(model))" in err.message


@pytest.mark.parametrize(
    ("tensor", "global_name"),
    [
        (torch.randn(3, dtype=torch.complex64), "torch.ComplexFloatStorage"),
        (torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8), "torch.QInt8Storage"),
        (torch.randn(3).to(torch.float8_e4m3fn), "torch.float8_e4m3fn"),
        (torch.randn(3, 3).to_sparse(), "torch._utils._rebuild_sparse_tensor"),
        (torch.empty(3, device="meta"), "torch._utils._rebuild_meta_tensor_no_storage"),
    ],
    ids=["complex", "quantized", "float8", "sparse", "meta"],
)
def test_disallowed_dtypes_and_layouts(
    tmp_path: Path, settings: Settings, tensor: torch.Tensor, global_name: str
) -> None:
    err = rejected(h.state_dict_file(tmp_path, {"w": tensor}), settings)
    assert (err.status, err.job_code) == (422, "unsupported_model")
    assert err.message.startswith("the state_dict holds tensors of a kind we do not prune")
    assert global_name in err.message



def test_one_dtype_list_for_door_safetensors_and_audit(tmp_path: Path) -> None:
    """ACCEPTED_DTYPES is what torch and safetensors really write for each dtype, the door
    accepts a file of every one of them, and the worker's audit allows exactly these."""
    from worker.engine import audit

    tensors = {d.name: torch.ones(3, dtype=getattr(torch, d.name)) for d in ACCEPTED_DTYPES}
    for d in ACCEPTED_DTYPES:
        dtype = getattr(torch, d.name)
        assert (dtype.itemsize, dtype.is_floating_point) == (d.itemsize, d.floating)
        one = h.state_dict_file(tmp_path, {"w": tensors[d.name]}, f"{d.name}.pt")
        assert d.storage in pickle_globals(one)
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path))
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8 : 8 + length])
    assert {name: header[name]["dtype"] for name in tensors} == {
        d.name: d.safetensors for d in ACCEPTED_DTYPES
    }
    settings = Settings()
    state_dict = h.state_dict_file(tmp_path, tensors, "all.pt")
    assert check_upload(state_dict, settings) is ModelFormat.STATE_DICT
    assert check_upload(path, settings) is ModelFormat.SAFETENSORS
    torch_dtypes = {getattr(torch, d.name) for d in ACCEPTED_DTYPES}
    assert audit.FLOAT_DTYPES | audit.INTEGER_DTYPES == torch_dtypes
    audit.check_tensors(tensors, settings)  # the worker's audit takes every one of them
