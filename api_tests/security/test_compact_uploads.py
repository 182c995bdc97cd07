"""Hostile compact (sparse_safetensors) uploads: the door refuses each with its message, and
the worker's loader refuses the same file with the matching job code."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.jobs.error_codes import JobErrorCode
from core.jobs.formats import ModelFormat
from core.settings import Settings
from core.uploads import RejectKind, UploadRejected, check_upload
from worker.engine import loading
from worker.engine import sparse_layout as compact
from worker.engine.errors import EngineError

META = {"format": "pt", "pruner.layout": "bitmask-v1"}
BAD, BIG = RejectKind.MALFORMED, RejectKind.TOO_LARGE  # 422 and 413 at the door


def weight() -> torch.Tensor:
    torch.manual_seed(0)
    w = torch.randn(16, 24)
    w[w.abs() < 1.0] = 0  # ~68% zeros: compact is smaller
    return w


def write(tmp_path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] = META,
          name: str = "m.safetensors") -> Path:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def refused(path: Path, kind: RejectKind, match: str, job_code: JobErrorCode) -> None:
    settings = Settings(max_tensor_elements=1_000_000)
    with pytest.raises(UploadRejected, match=match) as info:
        check_upload(path, settings)
    assert info.value.kind is kind
    assert info.value.job_code is job_code
    with pytest.raises(EngineError, match=match) as engine_info:
        loading.load_model(path, "mnist_mlp", settings)  # the worker runs the same checks
    assert engine_info.value.code is job_code


def test_a_good_compact_file_passes(tmp_path: Path) -> None:
    path = write(tmp_path, compact.encode({"w": weight(), "b": torch.ones(16)}))
    assert check_upload(path, Settings()) is ModelFormat.SPARSE_SAFETENSORS


def test_mask_ones_and_value_count_must_agree(tmp_path: Path) -> None:
    good = compact.encode({"w": weight()})
    path = write(tmp_path, {**good, "w": good["w"][:-3]})
    refused(path, BAD, r"mask marks \d+ stored elements but it holds \d+ values",
            JobErrorCode.INVALID_MODEL)


def test_mask_length_must_cover_the_shape(tmp_path: Path) -> None:
    good = compact.encode({"w": weight()})
    path = write(tmp_path, {**good, "w@shape": torch.tensor([16, 32])})
    refused(path, BAD, r"shape \[16, 32\] needs a mask of 64 bytes, got 48",
            JobErrorCode.INVALID_MODEL)


def test_bits_past_the_end_are_refused(tmp_path: Path) -> None:
    mask = torch.tensor([0, 0b1000_0000], dtype=torch.uint8)  # bit 15 of a 15-element tensor
    path = write(tmp_path, {"w": torch.ones(1), "w@mask": mask, "w@shape": torch.tensor([3, 5])})
    refused(path, BAD, "mask bits are set past element 15", JobErrorCode.INVALID_MODEL)


def test_a_huge_declared_shape_is_refused_before_anything_expands(tmp_path: Path) -> None:
    # 12 bytes of file would expand to 10^12 floats.
    path = write(tmp_path, {"w": torch.ones(1), "w@mask": torch.ones(1, dtype=torch.uint8),
                            "w@shape": torch.tensor([1_000_000, 1_000_000])})
    refused(path, BIG, r"declares shape \[1000000, 1000000\] = 1000000000000 elements",
            JobErrorCode.MODEL_TOO_LARGE)


def test_negative_shapes_wrong_dtypes_and_orphans_are_refused(tmp_path: Path) -> None:
    good = compact.encode({"w": weight()})
    cases = [
        ({**good, "w@shape": torch.tensor([-16, -24])}, "declares a negative shape"),
        ({**good, "w@mask": good["w@mask"].to(torch.int16)}, "its mask must be 1-D U8"),
        ({**good, "w@shape": good["w@shape"].int()}, "its shape must be 1-D I64"),
        ({**good, "w": good["w"].to(torch.int32)}, "values must be 1-D F16/BF16/F32/F64"),
        ({k: v for k, v in good.items() if k != "w@shape"}, "has no 'w@shape' entry"),
        ({"x@mask": good["w@mask"], "x@shape": good["w@shape"]}, "has no values entry 'x'"),
        ({**good, "w@shape": torch.ones(9, dtype=torch.int64)}, "more than 8 dimensions"),
    ]
    for i, (tensors, match) in enumerate(cases):
        refused(write(tmp_path, tensors, name=f"{i}.safetensors"), BAD, match,
                JobErrorCode.INVALID_MODEL)


def test_compact_entries_without_the_layout_marker_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, compact.encode({"w": weight()}), metadata={"format": "pt"})
    refused(path, BAD, "lacks 'pruner.layout'", JobErrorCode.INVALID_MODEL)


def test_a_declared_expansion_past_the_parameter_cap_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, compact.encode({"w": weight(), "v": weight()}))
    with pytest.raises(UploadRejected, match=r"expands to 768 elements; the limit is 500") as e:
        check_upload(path, Settings(max_parameters=500))
    assert e.value.kind is RejectKind.TOO_LARGE


def test_header_json_is_the_one_the_checks_read(tmp_path: Path) -> None:
    """Control: a hand-built header (no safetensors writer) with consistent pieces passes, so
    the refusals above come from the pieces, not from the writer."""
    values = struct.pack("<2f", 1.0, 2.0)
    mask = bytes([0b0000_0101])
    shape = struct.pack("<2q", 2, 3)
    header = {"__metadata__": META,
              "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "w@mask": {"dtype": "U8", "shape": [1], "data_offsets": [8, 9]},
              "w@shape": {"dtype": "I64", "shape": [2], "data_offsets": [9, 25]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "hand.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + values + mask + shape)
    assert check_upload(path, Settings()) is ModelFormat.SPARSE_SAFETENSORS
    decoded = compact.decode({"w": torch.tensor([1.0, 2.0]),
                              "w@mask": torch.tensor([5], dtype=torch.uint8),
                              "w@shape": torch.tensor([2, 3])})
    assert decoded["w"].tolist() == [[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]
