"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that answers a script of
status codes and records every delivery (headers and raw body) and every connection.

    with WebhookReceiver([500, 500, 200]) as receiver:  # then 200 for ever after
        ... notify={"url": receiver.url} ...
        deliveries = receiver.wait_for(3)

``port=`` binds a chosen port: a test may keep it closed first ("the receiver is down") and
start the receiver on it later.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # names in lower case
    body: bytes  # raw, as it arrived (what a signature covers)


class _Handler(BaseHTTPRequestHandler):
    server: WebhookReceiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = self.server.record(Received({k.lower(): v for k, v in self.headers.items()},
                                             body))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a test's output stays its own


class WebhookReceiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, statuses: Sequence[int] = (204,), port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self._script = list(statuses) or [204]
        self._lock = threading.Lock()
        self.received: list[Received] = []
        self.connections = 0
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def record(self, received: Received) -> int:
        """Keep ``received``; the status to answer it with (the script's next, its last one
        once it has run out)."""
        with self._lock:
            self.received.append(received)
            return self._script.pop(0) if len(self._script) > 1 else self._script[0]

    def get_request(self) -> tuple[socket.socket, Any]:
        request = super().get_request()
        with self._lock:
            self.connections += 1
        return request

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """The first ``count`` deliveries, once they have arrived."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} webhook deliveries "
                                     f"after {timeout} s")
            time.sleep(0.02)
        return self.received[:count]

    def __enter__(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
