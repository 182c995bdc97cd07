"""The ``compressed`` download (Deep Compression's storage) and its door checks, without torch.

A file is ``MAGIC`` (8 bytes), two little-endian u32 (the header's stored length, then its
length once inflated), the UTF-8 JSON header deflated with zlib (stdlib on both sides; a
LeNet-5 header shrinks from 1.6 kB to 0.4 kB), then one zstd frame per tensor, in header
order, back to back. The header, inflated::

    {"layout": "pruner-compressed-v1",
     "tensors": [{"name": "fc1.weight", "dtype": "F32", "shape": [300, 784],
                  "encoding": "codebook", "nnz": 11760, "bits": 6,
                  "structure": "gaps", "codes": "bytes", "sizes": [12010, 11760, 256],
                  "frame": 17032}, ...]}

A frame decompresses to three streams of ``sizes`` bytes, one after the other:

- structure: which elements are stored (``nnz`` of them), ``bitmask`` (``ceil(numel / 8)``
  bytes, bit ``i % 8`` of byte ``i // 8`` for element ``i``, padding bits 0) or ``gaps``
  (relative indices as in the paper: per stored element one byte ``gap - 1`` < 255, preceded
  by a 255 for every further 255 skipped; ``gap`` counts from the previous stored element,
  the first from -1); ``none`` for ``raw``;
- codes: one per stored element, ``bits`` wide: ``packed`` (a little-endian bit stream,
  ``ceil(nnz * bits / 8)`` bytes, padding bits 0) or ``bytes`` (one byte each);
- table: float32 little-endian: ``codebook`` entries (at most ``2 ** bits``), the ``linear``
  scales (one per row, ``shape[0]``), the ``sparse`` values (``nnz``), or the ``raw`` tensor.

Values: ``codebook``: ``table[code]``; ``linear``: ``float32(code - 2 ** (bits - 1)) *
table[row]`` (codes 1 .. ``2 ** bits - 1``, symmetric); ``sparse``: the table in order; every
element the structure leaves out is 0.

The checks below need only the header and the zstd frame headers: every size follows from
the declared shape, ``nnz`` and ``bits``; each frame must declare its decompressed size and
that size must be the three streams' sum. So a decoder (``client/decode.py``) allocates and
decompresses nothing past what the caps allow (no bombs), whatever the frames hold.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.jobs.formats import ModelFormat
from core.settings import Settings
from core.uploads.rejection import malformed, too_large, unsupported

MAGIC = b"PRUNERZ1"
LAYOUT = "pruner-compressed-v1"
PREFIX_BYTES = len(MAGIC) + 8  # magic + u32 stored header length + u32 inflated length
MAX_DIMS = 8
MAX_NAME = 1024
RAW_DTYPES = {"F32": 4, "F64": 8, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
              "BOOL": 1}  # fmt: skip
ENCODINGS = ("raw", "sparse", "codebook", "linear")
STRUCTURES = ("bitmask", "gaps")
CODES = ("packed", "bytes")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Limits:
    """Caps applied before anything is decompressed (the door passes the server's)."""

    max_header_bytes: int = 100_000_000
    max_tensors: int = 10_000
    max_tensor_elements: int = 1_000_000_000
    max_parameters: int = 2_000_000_000


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    nnz: int
    bits: int
    structure: str  # "bitmask", "gaps" or "none"
    codes: str  # "packed", "bytes" or "none"
    sizes: tuple[int, int, int]  # structure, codes, table bytes (decompressed)
    frame: int  # compressed bytes
    offset: int = 0  # of the frame, from the file's start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def limits_from(settings: Settings) -> Limits:
    return Limits(max_header_bytes=settings.max_safetensors_header_bytes,
                  max_tensors=settings.max_tensors,
                  max_tensor_elements=settings.max_tensor_elements,
                  max_parameters=settings.max_parameters)


def check_compressed(path: Path, settings: Settings) -> ModelFormat:
    """The door: header, sizes and frame headers against the server's caps; nothing is
    decompressed (the worker's reader decompresses each frame to its checked size only)."""
    check_file(path, limits_from(settings))
    return ModelFormat.COMPRESSED


def packed_bytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def read_header(data: bytes, limits: Limits) -> list[Entry]:
    """The checked entries of a whole file held in memory (``UploadRejected`` if not)."""
    return parse(data[:PREFIX_BYTES], lambda n: data[PREFIX_BYTES:PREFIX_BYTES + n],
                 lambda entry: data[entry.offset:entry.offset + 18], len(data), limits)


def check_file(path: Path, limits: Limits) -> list[Entry]:
    """The door: the checked entries of a stored file, reading only its header and the first
    bytes of each frame."""
    with path.open("rb") as f:
        def at(offset: int, count: int) -> bytes:
            f.seek(offset)
            return f.read(count)

        return parse(at(0, PREFIX_BYTES), lambda n: at(PREFIX_BYTES, n),
                     lambda entry: at(entry.offset, 18), path.stat().st_size, limits)


def parse(prefix: bytes, read_header_bytes: Callable[[int], bytes],
          frame_head: Callable[[Entry], bytes], file_size: int, limits: Limits) -> list[Entry]:
    """The checked entries; ``read_header_bytes(n)`` returns the n header bytes,
    ``frame_head(entry)`` the first (up to 18) bytes of an entry's frame."""
    if len(prefix) < PREFIX_BYTES or prefix[:len(MAGIC)] != MAGIC:
        raise malformed("not a compressed model file (bad magic or truncated)")
    stored, header_len = struct.unpack("<II", prefix[len(MAGIC):PREFIX_BYTES])
    if max(stored, header_len) > limits.max_header_bytes:
        raise too_large(f"the compressed header declares {max(stored, header_len)} bytes; the "
                        f"limit is {limits.max_header_bytes}")
    if PREFIX_BYTES + stored > file_size:
        raise malformed(f"the compressed file is truncated: its header declares {stored} "
                        f"bytes but the file has {file_size}")
    raw = inflate(read_header_bytes(stored), header_len)
    entries = _entries(_json(raw), limits)
    offset = PREFIX_BYTES + stored
    placed = []
    for entry in entries:
        placed.append(replace(entry, offset=offset))
        offset += entry.frame
    if offset != file_size:
        raise malformed(f"the compressed frames end at byte {offset} but the file has "
                        f"{file_size} bytes")
    for entry in placed:
        declared = zstd_content_size(frame_head(entry))
        if declared != sum(entry.sizes):
            raise malformed(f"tensor {entry.name!r}: its frame declares {declared} bytes, "
                            f"the header {sum(entry.sizes)}")
    return placed


def inflate(data: bytes, size: int) -> bytes:
    """The zlib stream ``data`` inflated to exactly ``size`` bytes (never more: no bombs)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, size)
    except zlib.error as exc:
        raise malformed(f"the compressed header does not inflate ({exc})") from None
    if len(raw) != size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise malformed(f"the compressed header does not inflate to exactly the {size} bytes "
                        "it declares")
    return raw


def _json(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise malformed(f"the compressed header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("layout") != LAYOUT:
        raise malformed(f"the compressed header must be an object with layout {LAYOUT!r}")
    if not isinstance(header.get("tensors"), list):
        raise malformed("the compressed header needs a 'tensors' list")
    return header


def _entries(header: dict[str, Any], limits: Limits) -> list[Entry]:
    rows = header["tensors"]
    if len(rows) > limits.max_tensors:
        raise too_large(f"the compressed file holds {len(rows)} tensors; the limit is "
                        f"{limits.max_tensors}")
    entries = [_entry(row) for row in rows]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise malformed("the compressed file names a tensor twice")
    total = 0
    for entry in entries:
        if entry.numel > limits.max_tensor_elements:
            raise too_large(f"tensor {entry.name!r} declares shape {list(entry.shape)} = "
                            f"{entry.numel} elements; the limit is "
                            f"{limits.max_tensor_elements}")
        total += entry.numel
    if total > limits.max_parameters:
        raise too_large(f"the compressed file expands to {total} elements; the limit is "
                        f"{limits.max_parameters}")
    for entry in entries:
        check_sizes(entry)
    return entries


_FIELDS = {"name": str, "dtype": str, "shape": list, "encoding": str, "nnz": int, "bits": int,
           "structure": str, "codes": str, "sizes": list, "frame": int}  # fmt: skip


def _entry(row: object) -> Entry:
    if not isinstance(row, dict) or set(row) != set(_FIELDS):
        raise malformed(f"each compressed tensor needs exactly the fields {sorted(_FIELDS)}")
    for field, kind in _FIELDS.items():
        if not isinstance(row[field], kind) or isinstance(row[field], bool):
            raise malformed(f"compressed tensor field {field!r} must be a {kind.__name__}")
    name = row["name"]
    if not 0 < len(name) <= MAX_NAME:
        raise malformed(f"a compressed tensor name must have 1 to {MAX_NAME} characters")
    shape, sizes = row["shape"], row["sizes"]
    if (len(shape) > MAX_DIMS or not all(_count(s) for s in shape)
            or len(sizes) != 3 or not all(_count(s) for s in sizes)):
        raise malformed(f"tensor {name!r}: shape (at most {MAX_DIMS} sizes) and sizes (3) "
                        "must be lists of non-negative integers")
    if row["nnz"] < 0 or row["frame"] < 1:
        raise malformed(f"tensor {name!r}: nnz must be >= 0 and frame >= 1")
    return Entry(name, row["dtype"], tuple(shape), row["encoding"], row["nnz"], row["bits"],
                 row["structure"], row["codes"], (sizes[0], sizes[1], sizes[2]), row["frame"])


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_sizes(e: Entry) -> None:
    """Every stream's size follows from shape, nnz and bits (the table's bounds the codebook)."""
    if e.encoding not in ENCODINGS:
        raise unsupported(f"tensor {e.name!r}: unknown encoding {e.encoding!r}")
    if e.encoding == "raw":
        if e.dtype not in RAW_DTYPES:
            raise unsupported(f"tensor {e.name!r}: dtype {e.dtype!r} is not one of "
                              f"{sorted(RAW_DTYPES)}")
        expected = (0, 0, e.numel * RAW_DTYPES[e.dtype])
        if (e.structure, e.codes, e.nnz, e.bits) != ("none", "none", e.numel, 0):
            raise malformed(f"tensor {e.name!r}: raw takes structure and codes 'none', nnz = "
                            "numel and bits 0")
        _expect(e, expected)
        return
    if e.dtype != "F32":
        raise unsupported(f"tensor {e.name!r}: {e.encoding} holds F32, not {e.dtype!r}")
    if e.nnz > e.numel or e.structure not in STRUCTURES:
        raise malformed(f"tensor {e.name!r}: nnz above numel, or structure not one of "
                        f"{STRUCTURES}")
    structure = e.sizes[0]
    if e.structure == "bitmask" and structure != (e.numel + 7) // 8:
        raise malformed(f"tensor {e.name!r}: a bitmask of {e.numel} elements has "
                        f"{(e.numel + 7) // 8} bytes, not {structure}")
    if e.structure == "gaps" and not e.nnz <= structure <= e.nnz + e.numel // 255:
        raise malformed(f"tensor {e.name!r}: {e.nnz} gaps take {e.nnz} to "
                        f"{e.nnz + e.numel // 255} bytes, not {structure}")
    if e.encoding == "sparse":
        if (e.codes, e.bits) != ("none", 0):
            raise malformed(f"tensor {e.name!r}: sparse takes codes 'none' and bits 0")
        _expect(e, (structure, 0, 4 * e.nnz))
        return
    low = 2 if e.encoding == "linear" else 1
    if not low <= e.bits <= 8 or e.codes not in CODES:
        raise malformed(f"tensor {e.name!r}: {e.encoding} takes bits {low}..8 and codes "
                        f"one of {CODES}")
    codes = packed_bytes(e.nnz, e.bits) if e.codes == "packed" else e.nnz
    if e.encoding == "linear":
        if not e.shape or e.shape[0] == 0:
            raise malformed(f"tensor {e.name!r}: linear needs a first dimension (its rows)")
        _expect(e, (structure, codes, 4 * e.shape[0]))
        return
    table = e.sizes[2]
    if table % 4 or not 4 <= table <= 4 * 2 ** e.bits:
        raise malformed(f"tensor {e.name!r}: a {e.bits}-bit codebook holds 1 to "
                        f"{2 ** e.bits} float32 entries, not {table} bytes")
    _expect(e, (structure, codes, table))


def _expect(e: Entry, sizes: tuple[int, int, int]) -> None:
    if e.sizes != sizes:
        raise malformed(f"tensor {e.name!r}: stream sizes {list(e.sizes)}, expected "
                        f"{list(sizes)}")


def zstd_content_size(head: bytes) -> int:
    """The decompressed size a zstd frame declares (RFC 8878 3.1.1.1); refuses a frame that
    declares none, uses a dictionary, or is not a zstd frame."""
    if len(head) < 6 or head[:4] != _ZSTD_MAGIC:
        raise malformed("a compressed tensor's frame is not a zstd frame")
    descriptor = head[4]
    fcs_flag, single, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    if descriptor & 0x08 or dict_flag:
        raise malformed("a zstd frame uses a dictionary or reserved bits")
    if fcs_flag == 0 and not single:
        raise malformed("a zstd frame does not declare its decompressed size")
    at = 5 + (0 if single else 1)
    width = (1, 2, 4, 8)[fcs_flag]
    if len(head) < at + width:
        raise malformed("a zstd frame header is truncated")
    value = int.from_bytes(head[at:at + width], "little")
    return value + 256 if width == 2 else value
