"""The ``compressed`` download's encoder (layout: ``core/uploads/compressed.py``).

Per tensor the smallest of the candidate streams wins, measured on the zstd frame itself:
the structure as a bitmask or as relative indices (``gaps``), the codes packed to ``bits`` or
one per byte (zstd's literals are Huffman-coded, so a byte per code is entropy-coded per
symbol, which bit-packing would blur). The reader is NumPy-only (``client/decode.py``); the
engine decodes through the same reader, so what a user decodes is what the job measured.
"""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import zstandard

from client.decode import decode_bytes
from core.uploads.compressed import LAYOUT, MAGIC, RAW_DTYPES, Limits
from worker.engine.quantize import QuantizedTensor

ZSTD_LEVEL = 19  # codes and structure: small, and worth the best ratio
FLOAT_LEVEL = 3  # float32 values barely compress; a large model must not pay level 19 on them
_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
           torch.uint8: "U8", torch.bool: "BOOL"}  # fmt: skip
U8 = npt.NDArray[np.uint8]


def _frame(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def bitmask(positions: npt.NDArray[np.int64], numel: int) -> bytes:
    bits = np.zeros(numel, dtype=np.uint8)
    bits[positions] = 1
    return np.packbits(bits, bitorder="little").tobytes()


def gaps(positions: npt.NDArray[np.int64]) -> bytes:
    """Per position ``gap - 1`` (gap from the previous one, the first from -1) as bytes: a
    255 for every whole 255, then the remainder."""
    whole, rest = np.divmod(np.diff(positions, prepend=-1) - 1, 255)
    counts = whole + 1
    out = np.full(int(counts.sum()), 255, dtype=np.uint8)
    out[np.cumsum(counts) - 1] = rest
    return out.tobytes()


def pack_codes(codes: npt.NDArray[np.int64], bits: int) -> bytes:
    grid = (codes[:, None] >> np.arange(bits)) & 1  # (nnz, bits), least significant first
    return np.packbits(grid.astype(np.uint8).ravel(), bitorder="little").tobytes()


Row = tuple[dict[str, object], bytes]  # header row, zstd frame


def _row(name: str, dtype: str, shape: list[int], encoding: str, nnz: int, bits: int,
         structure: str, codes: str, streams: tuple[bytes, bytes, bytes]) -> Row:
    quantised = encoding in ("codebook", "linear")
    frame = _frame(b"".join(streams), ZSTD_LEVEL if quantised else FLOAT_LEVEL)
    return ({"name": name, "dtype": dtype, "shape": shape, "encoding": encoding, "nnz": nnz,
             "bits": bits, "structure": structure, "codes": codes,
             "sizes": [len(s) for s in streams], "frame": len(frame)}, frame)


def encode_tensor(name: str, tensor: torch.Tensor, quantized: QuantizedTensor | None
                  ) -> Row:
    """The header row and the frame of one tensor (the smallest candidate)."""
    shape = list(tensor.shape)
    if tensor.dtype not in _DTYPES or _DTYPES[tensor.dtype] not in RAW_DTYPES:
        raise ValueError(f"tensor {name!r}: dtype {tensor.dtype} has no compressed encoding")
    dtype = _DTYPES[tensor.dtype]
    array = tensor.detach().cpu().contiguous().numpy()
    raw = _row(name, dtype, shape, "raw", array.size, 0, "none", "none",
               (b"", b"", array.astype(array.dtype.newbyteorder("<")).tobytes()))
    if dtype != "F32":
        return raw
    flat = array.reshape(-1)
    positions = np.flatnonzero(flat).astype(np.int64)
    values = flat[positions]
    structures = {"bitmask": bitmask(positions, flat.size), "gaps": gaps(positions)}
    if quantized is None:
        candidates = [_row(name, dtype, shape, "sparse", positions.size, 0, kind, "none",
                           (stream, b"", values.astype("<f4").tobytes()))
                      for kind, stream in structures.items()]
        return min([raw, *candidates], key=lambda row: len(row[1]))
    symbols, table = _symbols(name, flat, positions, quantized)
    layouts = {"packed": pack_codes(symbols, quantized.bits),
               "bytes": symbols.astype(np.uint8).tobytes()}
    encoding = "codebook" if quantized.kind == "codebook" else "linear"
    candidates = [_row(name, dtype, shape, encoding, positions.size, quantized.bits, kind,
                       layout, (stream, codes, table))
                  for (kind, stream), (layout, codes) in itertools.product(
                      structures.items(), layouts.items())]
    return min(candidates, key=lambda row: len(row[1]))


def _symbols(name: str, flat: npt.NDArray[np.float32], positions: npt.NDArray[np.int64],
             quantized: QuantizedTensor) -> tuple[npt.NDArray[np.int64], bytes]:
    """The codes of the stored values, and the table; checked to give the values back."""
    table = quantized.table.detach().cpu().float().numpy()
    values = flat[positions]
    if quantized.kind == "codebook":
        order = np.argsort(table, kind="stable")
        at = np.clip(np.searchsorted(table[order], values), 0, table.size - 1)
        symbols = order[at].astype(np.int64)
        # Only the centroids in use are stored (a 256-entry codebook for 90 weights would
        # cost more than the weights), the codes renumbered in their order.
        used = np.unique(symbols) if symbols.size else np.zeros(1, dtype=np.int64)
        table, symbols = table[used], np.searchsorted(used, symbols).astype(np.int64)
        back = table[symbols]
    else:
        half = 1 << (quantized.bits - 1)
        rows = positions // max(flat.size // table.size, 1)
        q = np.rint(values / table[rows]).astype(np.int64)
        symbols = q + half
        back = q.astype(np.float32) * table[rows]
    if not np.array_equal(back.view(np.uint32), values.view(np.uint32)):
        raise ValueError(f"tensor {name!r}: its weights are not made of its "
                         f"{quantized.kind} table")
    return symbols, table.astype("<f4").tobytes()


def encode(state: Mapping[str, torch.Tensor],
           quantized: Mapping[str, QuantizedTensor] | None = None) -> bytes:
    rows, frames = [], []
    for name, tensor in state.items():
        row, frame = encode_tensor(name, tensor, (quantized or {}).get(name))
        rows.append(row)
        frames.append(frame)
    header = json.dumps({"layout": LAYOUT, "tensors": rows}, separators=(",", ":")).encode()
    stored = zlib.compress(header, 9)
    return MAGIC + struct.pack("<II", len(stored), len(header)) + stored + b"".join(frames)


def decode(data: bytes, limits: Limits | None = None) -> dict[str, torch.Tensor]:
    """The dense state_dict, through the client's NumPy reader (``UploadRejected`` if the
    file does not hold together)."""
    return {name: torch.from_numpy(array.copy())
            for name, array in decode_bytes(data, limits).items()}


def save(state: Mapping[str, torch.Tensor], path: Path,
         quantized: Mapping[str, QuantizedTensor] | None = None) -> None:
    path.write_bytes(encode(state, quantized))
