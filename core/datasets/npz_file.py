"""A dataset in an ``.npz`` file, read with the standard library only (core has no numpy).

An npz is a zip of ``.npy`` members (``numpy.savez``, stored, or ``savez_compressed``,
deflated). Each member starts with a small header: magic ``\\x93NUMPY``, a version, a length,
then a Python dict literal ``{'descr': '<i8', 'fortran_order': False, 'shape': (N,)}``.
We judge the zip's central directory, then each member's header (``ast.literal_eval``:
literals only, never code) and its declared size against the member's; an object array
(``descr`` ``|O``: pickled Python objects) is refused as unsafe, so the worker's
``numpy.load(..., allow_pickle=False)`` never meets one.
"""

from __future__ import annotations

import ast
import struct
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from core.datasets.arrays import CHUNK, Array, refuse
from core.settings import Settings
from core.uploads.rejection import RejectKind

MAX_MEMBERS = 16
MAX_NPY_HEADER = 64 * 1024
_MAGIC = b"\x93NUMPY"
# numpy descr -> numpy name, for the dtypes a dataset may hold ('|u1' and '<i8' on any host).
_DTYPES = {"|u1": "uint8", "<u1": "uint8", "<i8": "int64", "<f4": "float32"}
_ITEMSIZE = {"uint8": 1, "int64": 8, "float32": 4}


def npz_arrays(path: Path, settings: Settings) -> list[Array]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_directory(infos, settings)
            return [_array(path, zf, info) for info in infos]
    except zipfile.BadZipFile as exc:
        raise refuse("file", f"not a readable zip archive ({exc})") from None


def _check_directory(infos: list[zipfile.ZipInfo], settings: Settings) -> None:
    if len(infos) > MAX_MEMBERS:
        raise refuse("file", f"the npz holds {len(infos)} members; a dataset has at most "
                     f"{MAX_MEMBERS}", RejectKind.TOO_LARGE)
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise refuse("file", "the npz names a member twice")
    total = 0
    for info in infos:
        if not info.filename.endswith(".npy") or "/" in info.filename:
            raise refuse("file", f"member {info.filename!r} is not an .npy array at the top "
                         "of the archive")
        if info.flag_bits & 0x1:
            raise refuse("file", f"member {info.filename!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise refuse("file", f"member {info.filename!r} uses compression method "
                         f"{info.compress_type}; only stored and deflate are read")
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > settings.max_compression_ratio:
            raise refuse("file", f"member {info.filename!r} expands {ratio:.0f}x; the limit "
                         f"is {settings.max_compression_ratio:g}x", RejectKind.TOO_LARGE)
        total += info.file_size
    if total > settings.max_uncompressed_bytes:
        raise refuse("file", f"the npz declares {total} uncompressed bytes; the limit is "
                     f"{settings.max_uncompressed_bytes}", RejectKind.TOO_LARGE)


def _array(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Array:
    name = info.filename.removesuffix(".npy")
    with zf.open(info) as f:
        header_len, fields = _npy_header(name, f)
    descr, shape = fields["descr"], fields["shape"]
    if descr not in _DTYPES:
        kind = RejectKind.UNSAFE if "O" in str(descr) else RejectKind.MALFORMED
        why = ("an object array holds pickled Python objects, which are never loaded"
               if kind is RejectKind.UNSAFE else f"dtype {descr!r} is not one a dataset holds")
        raise refuse(name, f"{why} (images uint8, labels int64, splits uint8, mean/std "
                     "float32)", kind)
    dtype = _DTYPES[descr]
    numel = 1
    for s in shape:
        numel *= s
    if header_len + numel * _ITEMSIZE[dtype] != info.file_size:
        raise refuse(name, f"shape {list(shape)} of {dtype} needs "
                     f"{header_len + numel * _ITEMSIZE[dtype]} bytes with its header; the "
                     f"member has {info.file_size}")
    return Array(name, dtype, shape, partial(_member_reader, path, info, header_len))


def _npy_header(name: str, f: Any) -> tuple[int, dict[str, Any]]:
    """(bytes before the data, the header dict) of one ``.npy`` member."""
    prefix = f.read(8)
    if len(prefix) < 8 or prefix[:6] != _MAGIC:
        raise refuse(name, "not an .npy array (no \\x93NUMPY magic)")
    major = prefix[6]
    if major == 1:
        raw_len = f.read(2)
        size, fmt = 10, "<H"
    elif major in (2, 3):
        raw_len = f.read(4)
        size, fmt = 12, "<I"
    else:
        raise refuse(name, f".npy format version {major} is unknown")
    if len(raw_len) != struct.calcsize(fmt):
        raise refuse(name, "the .npy header is truncated")
    (length,) = struct.unpack(fmt, raw_len)
    if length > MAX_NPY_HEADER:
        raise refuse(name, f"the .npy header declares {length} bytes; the limit is "
                     f"{MAX_NPY_HEADER}", RejectKind.TOO_LARGE)
    text = f.read(length)
    if len(text) != length:
        raise refuse(name, "the .npy header is truncated")
    return size + length, _header_fields(name, text)


def _header_fields(name: str, text: bytes) -> dict[str, Any]:
    try:
        fields = ast.literal_eval(text.decode("latin1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise refuse(name, "the .npy header is not a Python dict literal") from None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise refuse(name, "the .npy header must hold exactly descr, fortran_order and shape")
    shape = fields["shape"]
    if not isinstance(shape, tuple) or not all(
        type(s) is int and s >= 0 for s in shape
    ):
        raise refuse(name, "the .npy shape must be a tuple of non-negative integers")
    if fields["fortran_order"] is not False:
        raise refuse(name, "Fortran-ordered arrays are not read; save a C-ordered array")
    if not isinstance(fields["descr"], str):
        raise refuse(name, "a structured dtype is not one a dataset holds", RejectKind.UNSAFE
                     if "O" in repr(fields["descr"]) else RejectKind.MALFORMED)
    return fields


def _member_reader(path: Path, info: zipfile.ZipInfo, skip: int) -> Iterator[bytes]:
    with zipfile.ZipFile(path) as zf, zf.open(info) as f:
        f.read(skip)
        while chunk := f.read(CHUNK):
            yield chunk
