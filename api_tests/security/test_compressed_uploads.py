"""Hostile compressed uploads: the door (core, no torch, nothing decompressed) and the
NumPy reader refuse truncated files, counts and shapes over the caps, frames that lie about
their size (bombs), and streams that point out of range."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from client.decode import decode_bytes
from core.settings import Settings
from core.uploads import RejectKind, UploadRejected, check_upload
from core.uploads.compressed import LAYOUT, MAGIC, Limits


def _file(rows: list[dict[str, Any]], frames: list[bytes], header: Any = None) -> bytes:
    raw = json.dumps(header if header is not None else {"layout": LAYOUT, "tensors": rows})
    stored = zlib.compress(raw.encode())
    return MAGIC + struct.pack("<II", len(stored), len(raw)) + stored + b"".join(frames)


def _codebook_row(streams: tuple[bytes, bytes, bytes], **fields: Any
                  ) -> tuple[dict[str, Any], bytes]:
    frame = zstandard.ZstdCompressor().compress(b"".join(streams))
    row = {"name": "w", "dtype": "F32", "shape": [4, 4], "encoding": "codebook", "nnz": 3,
           "bits": 2, "structure": "bitmask", "codes": "bytes",
           "sizes": [len(s) for s in streams], "frame": len(frame)}
    return {**row, **fields}, frame


GOOD = (bytes([0b0000_0111, 0]), bytes([0, 1, 3]), np.arange(4, dtype="<f4").tobytes())


def _door(tmp_path: Path, data: bytes, settings: Settings | None = None) -> UploadRejected:
    path = tmp_path / "hostile.prz"
    path.write_bytes(data)
    with pytest.raises(UploadRejected) as info:
        check_upload(path, settings or Settings())
    return info.value


def _reader(data: bytes) -> UploadRejected:
    with pytest.raises(UploadRejected) as info:
        decode_bytes(data)
    return info.value


def test_a_well_formed_file_decodes() -> None:
    row, frame = _codebook_row(GOOD)
    assert decode_bytes(_file([row], [frame]))["w"].reshape(-1)[:4].tolist() == [0, 1, 3, 0]


def test_truncated(tmp_path: Path) -> None:
    row, frame = _codebook_row(GOOD)
    data = _file([row], [frame])[:-3]
    assert "frames end at byte" in _door(tmp_path, data).message


def test_header_length_past_the_file(tmp_path: Path) -> None:
    data = MAGIC + struct.pack("<II", 10_000, 2) + b"{}"
    assert "truncated" in _door(tmp_path, data).message


def test_a_header_bomb(tmp_path: Path) -> None:
    # 64 MB of spaces deflate to ~64 kB; the file says they inflate to 40 bytes.
    stored = zlib.compress(b" " * 64 * 2**20, 9)
    data = MAGIC + struct.pack("<II", len(stored), 40) + stored
    assert "exactly the 40 bytes" in _door(tmp_path, data).message


def test_a_header_over_the_cap(tmp_path: Path) -> None:
    data = MAGIC + struct.pack("<II", 10, 2**31) + bytes(10)
    error = _door(tmp_path, data, Settings(max_safetensors_header_bytes=10**6))
    assert error.kind is RejectKind.TOO_LARGE


def test_too_many_tensors(tmp_path: Path) -> None:
    row, frame = _codebook_row(GOOD)
    rows = [{**row, "name": f"w{i}"} for i in range(3)]
    error = _door(tmp_path, _file(rows, [frame] * 3), Settings(max_tensors=2))
    assert (error.kind, "holds 3 tensors" in error.message) == (RejectKind.TOO_LARGE, True)


def test_a_small_file_declaring_a_huge_shape(tmp_path: Path) -> None:
    row, frame = _codebook_row(GOOD, shape=[10**6, 10**6])
    assert _door(tmp_path, _file([row], [frame])).kind is RejectKind.TOO_LARGE


def test_a_bomb_frame_declaring_more_than_its_streams(tmp_path: Path) -> None:
    # 64 MB of zeros in a few kilobytes, under a header that says 22 bytes.
    bomb = zstandard.ZstdCompressor().compress(bytes(64 * 2**20))
    row, _ = _codebook_row(GOOD)
    data = _file([{**row, "frame": len(bomb)}], [bomb])
    assert "its frame declares 67108864 bytes" in _door(tmp_path, data).message


def test_a_frame_without_its_size(tmp_path: Path) -> None:
    compressor = zstandard.ZstdCompressor(write_content_size=False)
    chunks = compressor.compressobj()
    frame = chunks.compress(b"".join(GOOD)) + chunks.flush()
    row, _ = _codebook_row(GOOD)
    data = _file([{**row, "frame": len(frame)}], [frame])
    assert "does not declare" in _door(tmp_path, data).message


def test_sizes_that_do_not_follow_from_the_shape(tmp_path: Path) -> None:
    row, frame = _codebook_row(GOOD, nnz=5)  # 5 codes declared, 3 bytes of codes
    assert "stream sizes" in _door(tmp_path, _file([row], [frame])).message


def test_a_codebook_larger_than_its_bits(tmp_path: Path) -> None:
    streams = (GOOD[0], GOOD[1], np.arange(5, dtype="<f4").tobytes())
    row, frame = _codebook_row(streams)
    assert "codebook holds 1 to 4" in _door(tmp_path, _file([row], [frame])).message


def test_a_code_past_the_codebook() -> None:
    streams = (GOOD[0], bytes([0, 1, 3]), np.arange(2, dtype="<f4").tobytes())
    row, frame = _codebook_row(streams)
    assert "past its 2-entry codebook" in _reader(_file([row], [frame])).message


def test_bitmask_count_disagreeing_with_nnz() -> None:
    row, frame = _codebook_row((bytes([0b0000_1111, 0]), GOOD[1], GOOD[2]))
    assert "marks 4 elements, not 3" in _reader(_file([row], [frame])).message


def test_bitmask_padding_bits() -> None:
    # 9 elements: bits 1..7 of byte 1 are padding
    streams = (bytes([0b0000_0011, 0b0000_0010]), GOOD[1], GOOD[2])
    row, frame = _codebook_row(streams, shape=[3, 3])
    assert "set past element 9" in _reader(_file([row], [frame])).message


def test_gaps_pointing_past_the_tensor() -> None:
    # 16 elements; gaps 0, 0, 254 put the third element at 256.
    row, frame = _codebook_row((bytes([0, 0, 254]), GOOD[1], GOOD[2]), structure="gaps")
    assert "point past element 16" in _reader(_file([row], [frame])).message


def test_gaps_ending_in_a_continuation() -> None:
    row, frame = _codebook_row((bytes([0, 0, 1, 255]), GOOD[1], GOOD[2]), structure="gaps",
                               shape=[300])
    assert "continuation" in _reader(_file([row], [frame])).message


def test_unknown_encoding_and_fields(tmp_path: Path) -> None:
    row, frame = _codebook_row(GOOD, encoding="pickle")
    assert _door(tmp_path, _file([row], [frame])).kind is RejectKind.UNSUPPORTED


def test_reader_limits_are_its_own() -> None:
    row, frame = _codebook_row(GOOD)
    with pytest.raises(UploadRejected) as info:
        decode_bytes(_file([row], [frame]), Limits(max_parameters=10))
    assert info.value.kind is RejectKind.TOO_LARGE
