"""The compact sparse format (``sparse_safetensors``) and its door checks, without torch.

A compact file is an ordinary safetensors file whose ``__metadata__`` holds
``{"pruner.layout": "bitmask-v1"}``. Every tensor that is smaller this way is stored as three
entries; every other tensor (biases, integer buffers, dense weights) is stored as it is:

- ``NAME``: the non-zero values, 1-D, in row-major order of the dense tensor;
- ``NAME@mask``: uint8, ``ceil(numel / 8)`` bytes; bit ``i % 8`` (least significant first) of
  byte ``i // 8`` is 1 when element ``i`` of the flattened dense tensor is stored in ``NAME``;
  the padding bits past ``numel`` are 0;
- ``NAME@shape``: int64, the dense shape.

There are no indices to go out of range: the mask covers the dense tensor exactly, and its
count of ones must equal the number of values. These checks (run by the API at the door and
by the worker before loading, like every other upload check; ``core/uploads/safetensors_header``
calls them) refuse a file whose pieces do not
fit together, or whose declared dense shapes would expand past the tensor/parameter caps (a
small file declaring a huge shape).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.uploads.rejection import malformed, too_large

LAYOUT_KEY = "pruner.layout"
LAYOUT = "bitmask-v1"
MASK_SUFFIX = "@mask"
SHAPE_SUFFIX = "@shape"
MAX_DIMS = 8
VALUE_DTYPES = ("F16", "BF16", "F32", "F64")


@dataclass(frozen=True)
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int


def is_compact(metadata: object) -> bool:
    return isinstance(metadata, dict) and metadata.get(LAYOUT_KEY) == LAYOUT


def check_compact_safetensors(path: Path, raw_header: bytes, settings: Settings) -> bool:
    """When the (already structurally checked) safetensors header says it is compact, check
    how its pieces fit together and return True; a plain safetensors file passes untouched
    (False)."""
    header: dict[str, Any] = json.loads(raw_header.decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    if not is_compact(metadata):
        if any(k.endswith((MASK_SUFFIX, SHAPE_SUFFIX)) for k in header):
            raise malformed(
                f"the safetensors file has {MASK_SUFFIX}/{SHAPE_SUFFIX} entries but its "
                f"__metadata__ lacks {LAYOUT_KEY!r}: {LAYOUT!r}; it is neither plain nor compact"
            )
        return False
    data_start = 8 + len(raw_header)
    entries = {
        name: _Entry(e["dtype"], tuple(e["shape"]), data_start + e["data_offsets"][0],
                     data_start + e["data_offsets"][1])
        for name, e in header.items()
    }
    for name in entries:
        if "@" in name:
            _check_group(name, entries)
    total = 0
    with path.open("rb") as f:
        for name, entry in entries.items():
            if "@" in name:
                continue
            if f"{name}{MASK_SUFFIX}" in entries:
                total += _check_sparse(f, name, entries, settings)
            else:
                total += math.prod(entry.shape)
    if total > settings.max_parameters:
        raise too_large(
            f"the compact file expands to {total} elements; the limit is "
            f"{settings.max_parameters} (PRUNER_MAX_PARAMETERS)"
        )
    return True


def _check_group(name: str, entries: dict[str, _Entry]) -> None:
    """``NAME@mask`` and ``NAME@shape`` come with each other and with ``NAME``."""
    base, suffix = name.rsplit("@", 1)
    if f"@{suffix}" not in (MASK_SUFFIX, SHAPE_SUFFIX):
        raise malformed(
            f"compact entry {name!r}: '@' may only end a name as {MASK_SUFFIX} or {SHAPE_SUFFIX}"
        )
    if base not in entries:
        raise malformed(f"compact entry {name!r} has no values entry {base!r}")
    for suffix in (MASK_SUFFIX, SHAPE_SUFFIX):
        if f"{base}{suffix}" not in entries:
            raise malformed(f"compact tensor {base!r} has no {base + suffix!r} entry")


def _read(f: Any, entry: _Entry) -> bytes:
    f.seek(entry.begin)
    data: bytes = f.read(entry.end - entry.begin)
    return data


def _check_sparse(f: Any, name: str, entries: dict[str, _Entry], settings: Settings) -> int:
    """Check one compact tensor; return its dense element count."""
    values, mask = entries[name], entries[f"{name}{MASK_SUFFIX}"]
    shape_entry = entries[f"{name}{SHAPE_SUFFIX}"]
    if values.dtype not in VALUE_DTYPES or len(values.shape) != 1:
        raise malformed(
            f"compact tensor {name!r}: values must be 1-D {'/'.join(VALUE_DTYPES)}, got "
            f"{values.dtype} of shape {list(values.shape)}"
        )
    if mask.dtype != "U8" or len(mask.shape) != 1:
        raise malformed(f"compact tensor {name!r}: its mask must be 1-D U8")
    if shape_entry.dtype != "I64" or len(shape_entry.shape) != 1:
        raise malformed(f"compact tensor {name!r}: its shape must be 1-D I64")
    if shape_entry.shape[0] > MAX_DIMS:
        raise malformed(f"compact tensor {name!r} declares more than {MAX_DIMS} dimensions")
    shape: tuple[int, ...] = struct.unpack(f"<{shape_entry.shape[0]}q", _read(f, shape_entry))
    if any(s < 0 for s in shape):
        raise malformed(f"compact tensor {name!r} declares a negative shape {list(shape)}")
    numel = math.prod(shape)
    if numel > settings.max_tensor_elements:
        raise too_large(
            f"compact tensor {name!r} declares shape {list(shape)} = {numel} elements; the "
            f"limit is {settings.max_tensor_elements} (PRUNER_MAX_TENSOR_ELEMENTS)"
        )
    if mask.shape[0] != (numel + 7) // 8:
        raise malformed(
            f"compact tensor {name!r}: shape {list(shape)} needs a mask of {(numel + 7) // 8} "
            f"bytes, got {mask.shape[0]}"
        )
    bits = int.from_bytes(_read(f, mask), "little")
    if bits >> numel:
        raise malformed(f"compact tensor {name!r}: mask bits are set past element {numel}")
    ones = bits.bit_count()
    if ones != values.shape[0]:
        raise malformed(
            f"compact tensor {name!r}: its mask marks {ones} stored elements but it holds "
            f"{values.shape[0]} values"
        )
    return numel

