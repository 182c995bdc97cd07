"""A large streamed upload and what it costs the server: shared by the streaming tests
(api_tests/service/test_upload_streaming.py) and ``benchmarks/api_upload.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1024 * 1024
BOUNDARY = "benchboundary7d2f"
SPEC = json.dumps({"pruning": {"amount": 0.3}, "finetune": {"epochs": 0}}).encode()


def multipart_body(size_mib: int) -> Iterator[bytes]:
    """A chunked multipart body: the spec, then a zip-looking model file of ``size_mib``."""
    yield (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n').encode()
    yield SPEC
    yield (f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"; '
           f'filename="big.pt"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    block = b"PK\x03\x04" + bytes(range(256)) * (CHUNK // 256 - 1) + b"\x00" * 252
    for _ in range(size_mib):
        yield block
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def memory_kib(pid: int) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its peak (VmHWM), in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def written_bytes(pid: int) -> int:
    """Bytes the process passed to write(2) so far (/proc/pid/io wchar)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0
