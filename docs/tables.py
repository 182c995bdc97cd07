"""What the generated reference tables share: a page keeps its table between two markers, and
each generator prints it or rewrites it there (``--write``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def write_between(page: Path, start: str, end: str, rows: list[str]) -> None:
    """Replace what stands between ``start`` and ``end`` on ``page`` with ``rows``."""
    text = page.read_text()
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    page.write_text(head + start + "\n" + "\n".join(rows) + "\n" + end + tail)


def main(rows: Callable[[], list[str]], write: Callable[[], None]) -> None:
    if "--write" in sys.argv:
        write()
    else:
        print("\n".join(rows()))
