"""The arrays of a dataset file, whatever its container: name, dtype, shape and a way to read
the raw bytes in chunks. The containers (``safetensors_file.py``, ``npz_file.py``) build
these from headers alone; ``rules.py`` judges them and reads only the small arrays."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from core.uploads.rejection import RejectKind, UploadRejected

CHUNK = 1 << 16  # a multiple of every item size


@dataclass(frozen=True)
class Array:
    name: str
    dtype: str  # numpy's name: uint8, int64, float32 (what the rules compare against)
    shape: tuple[int, ...]
    read: Callable[[], Iterator[bytes]]  # the raw little-endian bytes, in chunks

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class DatasetRejected(UploadRejected):
    """A dataset file refused: ``field`` names the array (or ``file`` for the container)."""

    def __init__(self, kind: RejectKind, field: str, message: str) -> None:
        super().__init__(kind, f"{field}: {message}")
        self.field = field


def refuse(field: str, message: str, kind: RejectKind = RejectKind.MALFORMED) -> DatasetRejected:
    return DatasetRejected(kind, field, message)


def read_all(array: Array) -> bytes:
    """The whole array's bytes (only for the small ones: labels, splits, mean, std)."""
    return b"".join(array.read())
