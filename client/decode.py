"""Decode a ``compressed`` download with NumPy and zstandard only (no torch).

The layout is ``core/uploads/compressed.py``; its header checks run first, so nothing is
allocated or decompressed past the declared, capped sizes. ``pip install
'pruning-service[client]'`` brings numpy and zstandard::

    from client.decode import decode_file, write_safetensors
    write_safetensors(decode_file("job-pruned.prz"), "model.safetensors")

or ``pruner decode job-pruned.prz -o model.safetensors``. The tensors equal the job's
quantised weights bit for bit.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import zstandard

from core.uploads.compressed import Entry, Limits, read_header
from core.uploads.rejection import malformed

Array = npt.NDArray[np.generic]
_NUMPY = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}  # fmt: skip
_SAFETENSORS: dict[np.dtype[np.generic], str] = {np.dtype(v): k for k, v in _NUMPY.items()}


def decode_file(path: str | Path, limits: Limits | None = None) -> dict[str, Array]:
    return decode_bytes(Path(path).read_bytes(), limits)


def decode_bytes(data: bytes, limits: Limits | None = None) -> dict[str, Array]:
    """name -> dense array. Raises ``UploadRejected`` (core's reason kinds) when the file
    does not hold together."""
    entries = read_header(data, limits or Limits())
    out: dict[str, Array] = {}
    for entry in entries:
        streams = _decompress(data[entry.offset:entry.offset + entry.frame], entry)
        out[entry.name] = decode_entry(entry, streams)
    return out


def _decompress(frame: bytes, entry: Entry) -> bytes:
    expected = sum(entry.sizes)  # the frame's declared size, checked equal by read_header
    try:
        raw = zstandard.ZstdDecompressor().decompress(frame, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise malformed(f"tensor {entry.name!r}: its frame does not decompress ({exc})") from None
    if len(raw) != expected:
        raise malformed(f"tensor {entry.name!r}: its frame holds {len(raw)} bytes, not "
                        f"{expected}")
    return raw


def decode_entry(entry: Entry, raw: bytes) -> Array:
    s, c, _t = entry.sizes
    structure, codes, table = raw[:s], raw[s:s + c], raw[s + c:]
    if entry.encoding == "raw":
        return np.frombuffer(table, dtype=np.dtype(_NUMPY[entry.dtype]).newbyteorder("<")) \
            .astype(_NUMPY[entry.dtype]).reshape(entry.shape)
    positions = _positions(entry, structure)
    floats = np.frombuffer(table, dtype="<f4").astype(np.float32)
    if entry.encoding == "sparse":
        values = floats
    else:
        symbols = _codes(entry, codes)
        if entry.encoding == "codebook":
            if symbols.size and int(symbols.max()) >= floats.size:
                raise malformed(f"tensor {entry.name!r}: a code points past its "
                                f"{floats.size}-entry codebook")
            values = floats[symbols]
        else:  # linear: symmetric integers times the row's scale, in float32
            half = 1 << (entry.bits - 1)
            if symbols.size and int(symbols.min()) == 0:
                raise malformed(f"tensor {entry.name!r}: linear code 0 is not used")
            rows = positions // max(entry.numel // entry.shape[0], 1)
            values = (symbols.astype(np.int32) - half).astype(np.float32) * floats[rows]
    dense = np.zeros(entry.numel, dtype=np.float32)
    dense[positions] = values
    return dense.reshape(entry.shape)


def _positions(entry: Entry, structure: bytes) -> npt.NDArray[np.int64]:
    stream = np.frombuffer(structure, dtype=np.uint8)
    if entry.structure == "bitmask":
        bits = np.unpackbits(stream, bitorder="little")
        if bits[entry.numel:].any():
            raise malformed(f"tensor {entry.name!r}: bitmask bits set past element "
                            f"{entry.numel}")
        positions = np.flatnonzero(bits[:entry.numel]).astype(np.int64)
    else:  # gaps: 255 carries on to the next byte, anything smaller ends a gap
        if stream.size and stream[-1] == 255:
            raise malformed(f"tensor {entry.name!r}: its gaps end in a continuation")
        ends = np.flatnonzero(stream < 255)
        total = np.cumsum(stream, dtype=np.int64)
        positions = total[ends] + np.arange(ends.size, dtype=np.int64)
        if positions.size and int(positions[-1]) >= entry.numel:
            raise malformed(f"tensor {entry.name!r}: its gaps point past element "
                            f"{entry.numel}")
    if positions.size != entry.nnz:
        raise malformed(f"tensor {entry.name!r}: its structure marks {positions.size} "
                        f"elements, not {entry.nnz}")
    return positions


def _codes(entry: Entry, codes: bytes) -> npt.NDArray[np.int64]:
    stream = np.frombuffer(codes, dtype=np.uint8)
    if entry.codes == "bytes":
        symbols = stream.astype(np.int64)
        if symbols.size and int(symbols.max()) >> entry.bits:
            raise malformed(f"tensor {entry.name!r}: a code is wider than {entry.bits} bits")
        return symbols
    bits = np.unpackbits(stream, bitorder="little")
    used = entry.nnz * entry.bits
    if bits[used:].any():
        raise malformed(f"tensor {entry.name!r}: code padding bits are set")
    weights = np.left_shift(1, np.arange(entry.bits, dtype=np.int64))
    grid = bits[:used].reshape(entry.nnz, entry.bits).astype(np.int64)  # (nnz, bits)
    result: npt.NDArray[np.int64] = grid @ weights
    return result


def safetensors_bytes(tensors: dict[str, Array]) -> bytes:
    """A safetensors file holding ``tensors`` (written by hand: no torch, no safetensors)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    chunks, offset = [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _SAFETENSORS[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def write_safetensors(tensors: dict[str, Array], path: str | Path) -> Path:
    target = Path(path)
    target.write_bytes(safetensors_bytes(tensors))
    return target
