"""Server-sent events, as ``GET /v1/jobs/{id}/events`` sends them (text/event-stream)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    event: str
    data: str


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the stream's lines: ``event:`` and ``data:`` fields up to a blank line;
    comments (``: keep-alive``) and unknown fields are skipped, as the SSE standard says."""
    name, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield Event(name, "\n".join(data))
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
