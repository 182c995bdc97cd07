"""Job files as HTTP responses, from whichever store holds them.

A local store's file is served by Starlette's ``FileResponse`` (Range, multipart ranges). A
remote store's (S3) is streamed from a ranged GET through the API without a local copy, with
the same headers: ``Accept-Ranges``, ``Content-Length``, ``Content-Disposition``, one range as
``206`` with ``Content-Range``, an unsatisfiable one as ``416``. A request for several ranges
gets the whole file (``200``), which RFC 9110 allows; so does a malformed ``Range``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from starlette.responses import FileResponse, Response, StreamingResponse

from core.storage.protocols import BlobStore

_ONE_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class RangeNotSatisfiable(Exception):
    pass


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte, inclusive, of a single-range ``Range`` header; None: the whole
    file. Raises ``RangeNotSatisfiable`` when the range lies past the end."""
    if header is None:
        return None
    found = _ONE_RANGE.match(header)
    if found is None or found.group(1) == found.group(2) == "":
        return None  # several ranges, or not a byte range we understand: send it all
    first, last = found.group(1), found.group(2)
    if first == "":  # bytes=-N: the last N bytes
        if int(last) == 0:
            raise RangeNotSatisfiable()
        return max(size - int(last), 0), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size:
        raise RangeNotSatisfiable()
    if end < start:
        return None  # invalid (last before first): ignored, as RFC 9110 says
    return start, end


def blob_response(
    blobs: BlobStore, job_id: str, name: str, range_header: str | None, *, media_type: str,
    filename: str | None = None, headers: Mapping[str, str] | None = None,
) -> Response:
    headers = dict(headers or {})
    if blobs.files_are_local:
        return FileResponse(blobs.local_path(job_id, name), media_type=media_type,
                            filename=filename, headers=headers)
    size = blobs.size(job_id, name)
    headers["Accept-Ranges"] = "bytes"
    if filename is not None:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    try:
        span = byte_range(range_header, size)
    except RangeNotSatisfiable:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    if span is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(blobs.read(job_id, name), media_type=media_type,
                                 headers=headers)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(blobs.read(job_id, name, start, end), status_code=206,
                             media_type=media_type, headers=headers)
