"""safetensors headers (``core.uploads.safetensors_header``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api_tests.security import hostile as h
from api_tests.security.uploads.refusal import rejected
from core.settings import Settings


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
