"""Byte ranges for downloads streamed from a remote store (service/downloads.py)."""

from __future__ import annotations

import pytest

from service.downloads import RangeNotSatisfiable, byte_range


@pytest.mark.parametrize(("header", "span"), [
    (None, None),
    ("bytes=0-4", (0, 4)),
    ("bytes=5-", (5, 99)),
    ("bytes=-10", (90, 99)),
    ("bytes=-500", (0, 99)),  # more than the file: all of it
    ("bytes=90-500", (90, 99)),  # last byte past the end: clipped
    ("BYTES = 1 - 2", (1, 2)),
    ("bytes=0-1,5-6", None),  # several ranges: the whole file, 200
    ("bytes=7-3", None),  # last before first: ignored
    ("items=0-4", None),
    ("bytes=-", None),
    ("garbage", None),
])
def test_byte_range(header: str | None, span: tuple[int, int] | None) -> None:
    assert byte_range(header, 100) == span


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-200", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, 100)
