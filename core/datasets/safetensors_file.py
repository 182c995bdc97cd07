"""A dataset in a safetensors file: its arrays from the header, before any data is read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from core.datasets.arrays import CHUNK, Array, refuse
from core.settings import Settings
from core.uploads.safetensors_header import entry_span, read_header

# safetensors dtype codes -> numpy names, for the dtypes a dataset may hold.
_DTYPES = {"U8": "uint8", "I64": "int64", "F32": "float32"}
_ITEMSIZE = {"uint8": 1, "int64": 8, "float32": 4}


def _reader(path: Path, start: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise refuse("file", "the file ended inside an array's data")
            left -= len(chunk)
            yield chunk


def safetensors_arrays(path: Path, settings: Settings) -> tuple[list[Array], list[str] | None]:
    """(the arrays, the class names in ``__metadata__["classes"]`` if any)."""
    header, raw, data_len = read_header(path, settings)
    data_start = 8 + len(raw)
    arrays: list[Array] = []
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        code, shape, begin, end = entry_span(name, entry)
        dtype = _DTYPES.get(code)
        if dtype is None:
            raise refuse(name, f"dtype {code} is not one a dataset holds "
                         f"({', '.join(_DTYPES)}: images U8, labels I64, splits U8, mean/std F32)")
        numel = 1
        for s in shape:
            numel *= s
        if end - begin != numel * _ITEMSIZE[dtype]:
            raise refuse(name, f"shape {list(shape)} of {code} needs {numel * _ITEMSIZE[dtype]} "
                         f"bytes but data_offsets span {end - begin}")
        if end > data_len:
            raise refuse(name, f"ends at data byte {end} but the file holds {data_len} "
                         "(truncated?)")
        spans.append((begin, end, name))
        arrays.append(Array(name, dtype, shape,
                            partial(_reader, path, data_start + begin, end - begin)))
    spans.sort()
    for (_b1, e1, n1), (b2, _e2, n2) in zip(spans, spans[1:], strict=False):
        if b2 < e1:
            raise refuse(n2, f"its data overlaps {n1!r}'s")
    return arrays, _class_names(raw)


def _class_names(raw: bytes) -> list[str] | None:
    metadata = json.loads(raw).get("__metadata__") or {}  # already parsed once: valid
    text = metadata.get("classes")
    if text is None:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) and len(n) <= 200
                                              for n in names):
        raise refuse("__metadata__.classes", "must be a JSON list of class names "
                     "(strings of at most 200 characters)")
    return names
