"""A safetensors file judged from its header alone: length cap, JSON, dtypes, shapes against
data offsets, overlapping or out-of-range offsets, tensor count and element caps."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from core.jobs.formats import ModelFormat
from core.settings import Settings
from core.uploads.allowlists import FLOAT_SAFETENSORS_CODES, SAFETENSORS_ITEMSIZE
from core.uploads.compact import check_compact_safetensors
from core.uploads.pickle_scan import int_tuple
from core.uploads.rejection import malformed, too_large, unsupported

# dtypes the safetensors format knows but we do not prune (any other code is unknown).
_SAFETENSORS_UNSUPPORTED = {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2",
                            "C64", "C128", "U16", "U32", "U64"}  # fmt: skip
_FLOAT_CODES = ", ".join(FLOAT_SAFETENSORS_CODES)


def check_safetensors(path: Path, settings: Settings) -> ModelFormat:
    """Header of a safetensors file: length, JSON, dtypes, shapes vs offsets, caps; then, for
    the compact layout, how its pieces fit (``core/uploads/compact.py``)."""
    header, raw, data_len = read_header(path, settings)
    _check_entries(header, data_len, settings)
    if check_compact_safetensors(path, raw, settings):
        return ModelFormat.SPARSE_SAFETENSORS
    return ModelFormat.SAFETENSORS


def read_header(path: Path, settings: Settings) -> tuple[dict[str, Any], bytes, int]:
    """(the tensor entries, the raw header, the data length) of a safetensors file, its
    length cap and JSON checked; ``__metadata__`` is checked and left out of the entries."""
    file_size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise malformed("the safetensors file is truncated (no header length)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > settings.max_safetensors_header_bytes:
            raise too_large(
                f"the safetensors header declares {header_len} bytes; the limit is "
                f"{settings.max_safetensors_header_bytes} (PRUNER_MAX_SAFETENSORS_HEADER_BYTES)"
            )
        if 8 + header_len > file_size:
            raise malformed(
                f"the safetensors file is truncated: its header declares {header_len} bytes "
                f"but the file has {file_size}"
            )
        raw = f.read(header_len)
    return _parse_header(raw), raw, file_size - 8 - header_len


def entry_span(name: str, entry: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each part's form checked (the dtype
    only for being a string: callers hold their own lists)."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise malformed(f"tensor {name!r}: expected exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise malformed(f"tensor {name!r} has unknown dtype {dtype!r}")
    size = int_tuple(tuple(shape)) if isinstance(shape, list) else None
    if size is None or any(s < 0 for s in size):
        raise malformed(f"tensor {name!r}: shape must be a list of non-negative integers")
    span = int_tuple(tuple(offsets)) if isinstance(offsets, list) else None
    if span is None or len(span) != 2 or not 0 <= span[0] <= span[1]:
        raise malformed(f"tensor {name!r}: data_offsets must be [begin, end] with begin <= end")
    return dtype, size, span[0], span[1]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice")
        result[key] = value
    return result


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise malformed(f"the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise malformed("the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise malformed("the safetensors __metadata__ must map strings to strings")
    return header


def _check_entries(header: dict[str, Any], data_len: int, settings: Settings) -> None:
    if len(header) > settings.max_tensors:
        raise too_large(
            f"the safetensors file holds {len(header)} tensors; the limit is "
            f"{settings.max_tensors} (PRUNER_MAX_TENSORS)"
        )
    spans: list[tuple[int, int, str]] = []
    total = 0
    for name, entry in header.items():
        begin, end, numel = _entry(name, entry, settings)
        if end > data_len:
            raise malformed(
                f"tensor {name!r} ends at byte {end} of the data, which has {data_len} bytes"
            )
        spans.append((begin, end, name))
        total += numel
    if total > settings.max_parameters:
        raise too_large(
            f"the safetensors file holds {total} elements; the limit is "
            f"{settings.max_parameters} (PRUNER_MAX_PARAMETERS)"
        )
    spans.sort()
    for (_b1, e1, n1), (b2, _e2, n2) in zip(spans, spans[1:], strict=False):
        if b2 < e1:
            raise malformed(f"tensors {n1!r} and {n2!r} overlap in the safetensors data")


def _entry(name: str, entry: Any, settings: Settings) -> tuple[int, int, int]:
    dtype, size, begin, end = entry_span(name, entry)
    if dtype in _SAFETENSORS_UNSUPPORTED:
        raise unsupported(
            f"tensor {name!r} has dtype {dtype}; only floating point ({_FLOAT_CODES}) "
            "and integer tensors are accepted"
        )
    if dtype not in SAFETENSORS_ITEMSIZE:
        raise malformed(f"tensor {name!r} has unknown dtype {dtype!r}")
    numel = math.prod(size)
    if numel > settings.max_tensor_elements:
        raise too_large(
            f"tensor {name!r} declares shape {list(size)} = {numel} elements; the limit is "
            f"{settings.max_tensor_elements} (PRUNER_MAX_TENSOR_ELEMENTS)"
        )
    itemsize = SAFETENSORS_ITEMSIZE[dtype]
    if end - begin != numel * itemsize:
        raise malformed(
            f"tensor {name!r}: shape {list(size)} of {dtype} needs {numel * itemsize} bytes "
            f"but data_offsets span {end - begin}"
        )
    return begin, end, numel
