"""A raw-socket HTTP client for what httpx hides: a body sent byte by byte, a connection
dropped mid-body, a declared length never sent, and whether the server closed the
connection. Loopback only."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

BOUNDARY = "rawboundary5c1e"
SPEC = b'{"pruning": {"amount": 0.3}, "finetune": {"epochs": 0}}'


def form_head() -> bytes:
    """The start of a multipart body: the spec, then the model part's headers."""
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n'.encode()
            + SPEC + f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"; '
            'filename="m.pt"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode())


def open_upload(url: str, key: str, content_length: int) -> socket.socket:
    """Connect to the API at ``url`` (http://127.0.0.1:port) and send a POST /v1/jobs's
    request head declaring ``content_length`` bytes of multipart body."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {content_length}\r\n\r\n".encode())
    return sock


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    closed: bool  # the server closed the connection after answering


def read_answer(sock: socket.socket, timeout: float = 10.0) -> Answer:
    """The response's status and headers, and whether the connection then reached EOF
    (or a reset) within ``timeout``: a server that keeps reading the body never closes."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed before a full response head: {data!r}")
        data += more
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in head[1:])}
    deadline = time.monotonic() + timeout
    closed = False
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                closed = True
                break
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    return Answer(int(head[0].split()[1]), headers, closed)
