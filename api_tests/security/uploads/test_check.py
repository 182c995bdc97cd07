"""The front, ``core.uploads.check_upload``: what passes (and as which format), the size
cap, and files that are no model container at all."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from api_tests.security import hostile as h
from api_tests.security.uploads.refusal import mlp_state_dict, rejected
from core.jobs.formats import ModelFormat
from core.settings import Settings
from core.uploads import check_upload


def test_ordinary_files_pass(tmp_path: Path, settings: Settings) -> None:
    sd = mlp_state_dict()
    state_dict = ModelFormat.STATE_DICT
    assert check_upload(h.state_dict_file(tmp_path, sd), settings) is state_dict
    params = {k: torch.nn.Parameter(v.float()) for k, v in sd.items() if v.is_floating_point()}
    assert check_upload(h.state_dict_file(tmp_path, params, "p.pt"), settings) is state_dict
    halves = {k: v.half() for k, v in sd.items() if v.is_floating_point()}
    assert check_upload(h.state_dict_file(tmp_path, halves, "h.pt"), settings) is state_dict
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    assert check_upload(tmp_path / "m.safetensors", settings) is ModelFormat.SAFETENSORS
    script = h.save_script(torch.nn.Sequential(torch.nn.Linear(4, 3)), tmp_path / "ts.pt")
    assert check_upload(script, settings) is ModelFormat.TORCHSCRIPT


def test_traced_model_with_constant_tensors_passes(tmp_path: Path, settings: Settings) -> None:
    class AddsConstant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.ones(3) * 2

    traced = torch.jit.trace(AddsConstant(), torch.zeros(3))
    path = tmp_path / "traced.pt"
    torch.jit.save(traced, str(path))
    assert any(n.endswith("constants/0") for n in zipfile.ZipFile(path).namelist())
    assert check_upload(path, settings) is ModelFormat.TORCHSCRIPT


def test_bare_pickle_is_not_a_supported_format(
    tmp_path: Path, settings: Settings, canary: Path
) -> None:
    err = rejected(h.raw_shell_pickle(tmp_path, canary), settings)
    assert (err.status, err.code) == (415, "unsupported_media_type")
    assert canary.read_text() == h.CANARY_TEXT


def test_truncated_and_random_bytes(tmp_path: Path, settings: Settings) -> None:
    good = h.state_dict_file(tmp_path, mlp_state_dict()).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    err = rejected(truncated, settings)
    assert (err.status, err.code, err.job_code) == (422, "invalid_upload", "invalid_model")
    assert err.message.startswith("the model file is not a readable zip archive")

    random_bytes = tmp_path / "random.bin"
    random_bytes.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                           generator=torch.Generator().manual_seed(1)).numpy()
                             .tobytes().replace(b"{", b"}"))
    assert rejected(random_bytes, settings).status == 415

    random_zip_head = tmp_path / "pk.bin"
    random_zip_head.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    assert rejected(random_zip_head, settings).status == 422

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert rejected(empty, settings).status == 415


def test_over_limit_upload(tmp_path: Path) -> None:
    path = h.state_dict_file(tmp_path, mlp_state_dict())
    size = path.stat().st_size
    err = rejected(path, Settings(max_upload_bytes=size - 1))
    assert (err.status, err.code) == (413, "payload_too_large")
    assert err.message == (
        f"the model file has {size} bytes; the limit is {size - 1} (PRUNER_MAX_UPLOAD_BYTES)"
    )
