"""The checks at the door (core.upload_checks): every hostile file gets its exact status, code,
job code and message, and nothing in it runs (the canary stays untouched)."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from api_tests.security import hostile as h
from core.errors import JobErrorCode
from core.jobs import UploadFormat
from core.settings import Settings
from core.upload_checks import (
    ALLOWED_STATE_DICT_GLOBALS,
    UploadRejected,
    check_upload,
    pickle_globals,
)


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return h.make_canary(tmp_path)


def rejected(path: Path, settings: Settings) -> UploadRejected:
    with pytest.raises(UploadRejected) as info:
        check_upload(path, settings)
    return info.value


def mlp_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    return dict(model.state_dict())


# --- what must pass ---------------------------------------------------------------------------


def test_ordinary_files_pass(tmp_path: Path, settings: Settings) -> None:
    sd = mlp_state_dict()
    assert check_upload(h.state_dict_file(tmp_path, sd), settings) is UploadFormat.ZIP
    params = {k: torch.nn.Parameter(v.float()) for k, v in sd.items() if v.is_floating_point()}
    assert check_upload(h.state_dict_file(tmp_path, params, "p.pt"), settings) is UploadFormat.ZIP
    halves = {k: v.half() for k, v in sd.items() if v.is_floating_point()}
    assert check_upload(h.state_dict_file(tmp_path, halves, "h.pt"), settings) is UploadFormat.ZIP
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    assert check_upload(tmp_path / "m.safetensors", settings) is UploadFormat.SAFETENSORS
    script = h.save_script(torch.nn.Sequential(torch.nn.Linear(4, 3)), tmp_path / "ts.pt")
    assert check_upload(script, settings) is UploadFormat.ZIP


def test_traced_model_with_constant_tensors_passes(tmp_path: Path, settings: Settings) -> None:
    class AddsConstant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.ones(3) * 2

    traced = torch.jit.trace(AddsConstant(), torch.zeros(3))
    path = tmp_path / "traced.pt"
    torch.jit.save(traced, str(path))
    assert any(n.endswith("constants/0") for n in zipfile.ZipFile(path).namelist())
    assert check_upload(path, settings) is UploadFormat.ZIP


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


# --- pickles that run code ----------------------------------------------------------------------


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


def test_bare_pickle_is_not_a_supported_format(
    tmp_path: Path, settings: Settings, canary: Path
) -> None:
    err = rejected(h.raw_shell_pickle(tmp_path, canary), settings)
    assert (err.status, err.code) == (415, "unsupported_media_type")
    assert canary.read_text() == h.CANARY_TEXT


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


# --- TorchScript load-time code -----------------------------------------------------------------


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


# --- archive structure --------------------------------------------------------------------------


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


def test_zip_that_is_not_a_torch_archive(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    assert rejected(path, settings).message == (
        "the zip archive is not a torch.save or torch.jit.save archive (expected one "
        "top-level folder holding data.pkl)"
    )


def test_malformed_pickle(tmp_path: Path, settings: Settings) -> None:
    path = h.rewrite_zip(h.state_dict_file(tmp_path, mlp_state_dict()), tmp_path / "bad.pt",
                         {"data.pkl": b"\x80\x02\x85."})
    err = rejected(path, settings)
    assert err.status == 422 and err.message.startswith("data.pkl is not a valid pickle")


# --- storages and tensors -----------------------------------------------------------------------


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


def test_over_limit_upload(tmp_path: Path) -> None:
    path = h.state_dict_file(tmp_path, mlp_state_dict())
    size = path.stat().st_size
    err = rejected(path, Settings(max_upload_bytes=size - 1))
    assert (err.status, err.code) == (413, "payload_too_large")
    assert err.message == (
        f"the model file has {size} bytes; the limit is {size - 1} (PRUNER_MAX_UPLOAD_BYTES)"
    )


# --- safetensors --------------------------------------------------------------------------------


def f32(name: str, shape: list[int], begin: int) -> dict[str, object]:
    n = 1
    for s in shape:
        n *= s
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": [begin, begin + 4 * n]}}


def test_safetensors_header_over_cap(tmp_path: Path) -> None:
    path = h.safetensors_raw(tmp_path, {}, b"", header_len=2**40)
    path.write_bytes(path.read_bytes()[:8] + b"{" + b" " * 100)
    err = rejected(path, Settings(max_safetensors_header_bytes=1024))
    assert (err.status, err.code) == (413, "payload_too_large")
    assert err.message == (
        f"the safetensors header declares {2**40} bytes; the limit is 1024 "
        "(PRUNER_MAX_SAFETENSORS_HEADER_BYTES)"
    )


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        (b"{not json", b"", "the safetensors header is not valid JSON"),
        (b'{"a": 1, "a": 2}', b"", "the safetensors header is not valid JSON (key 'a' appears"),
        ({"w": {"dtype": "F32", "shape": [2]}}, b"", "tensor 'w': expected exactly dtype"),
        ({"w": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, bytes(8),
         "tensor 'w' has unknown dtype 'X9'"),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8),
         "tensor 'w': shape must be a list of non-negative integers"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8),
         "tensor 'w': shape [3] of F32 needs 12 bytes but data_offsets span 8"),
        (f32("w", [4], 0), bytes(8), "tensor 'w' ends at byte 16 of the data, which has 8 bytes"),
        (f32("a", [2], 0) | f32("b", [2], 4), bytes(12),
         "tensors 'a' and 'b' overlap in the safetensors data"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, bytes(8),
         "tensor 'w': data_offsets must be [begin, end] with begin <= end"),
        ({"__metadata__": {"a": 1}}, b"", "the safetensors __metadata__ must map strings"),
    ],
    ids=["json", "duplicate", "keys", "dtype", "shape", "size", "range", "overlap",
         "offsets", "metadata"],
)
def test_safetensors_header_structure(
    tmp_path: Path, settings: Settings, header: object, data: bytes, message: str
) -> None:
    err = rejected(h.safetensors_raw(tmp_path, header, data), settings)
    assert (err.status, err.code) == (422, "invalid_upload")
    assert err.message.startswith(message)


def test_safetensors_truncated(tmp_path: Path, settings: Settings) -> None:
    path = h.safetensors_raw(tmp_path, f32("w", [2], 0), bytes(8))
    raw = path.read_bytes()
    path.write_bytes(raw[:20])
    err = rejected(path, settings)
    assert err.message == (
        f"the safetensors file is truncated: its header declares {len(raw) - 16} bytes but "
        "the file has 20"
    )


def test_safetensors_complex_dtype_and_caps(tmp_path: Path) -> None:
    header = {"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}
    err = rejected(h.safetensors_raw(tmp_path, header, bytes(8)), Settings())
    assert (err.status, err.job_code) == (422, "unsupported_model")
    assert err.message.startswith("tensor 'w' has dtype C64")

    big = h.safetensors_raw(tmp_path, f32("w", [1000, 1000], 0), b"", name="big.safetensors")
    err = rejected(big, Settings(max_tensor_elements=999_999))
    assert err.status == 413  # judged from the header alone: the data is not even there
    assert "declares shape [1000, 1000] = 1000000 elements" in err.message

    two = h.safetensors_raw(tmp_path, f32("a", [2], 0) | f32("b", [2], 8), bytes(16))
    assert rejected(two, Settings(max_tensors=1)).message == (
        "the safetensors file holds 2 tensors; the limit is 1 (PRUNER_MAX_TENSORS)"
    )
    assert json.loads(two.read_bytes()[8:-16])["a"]["data_offsets"] == [0, 8]


def test_torchscript_code_size_is_bounded(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.upload_checks as checks

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
    import core.upload_checks as checks

    path = h.many_entries(tmp_path, 69_999)
    monkeypatch.setattr(checks.zipfile, "ZipFile", None)  # any use would raise TypeError
    err = rejected(path, settings)
    assert err.message == (
        "the zip archive has 70000 entries; the limit is 10000 (PRUNER_MAX_ARCHIVE_ENTRIES)"
    )
