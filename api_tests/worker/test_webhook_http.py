"""Webhook delivery against real receivers on 127.0.0.1: what an allow-listed one gets byte
for byte; every unsafe destination refused before any connection is attempted; redirects,
errors, slow and chatty receivers as results, never exceptions; TLS to the pinned IP with SNI
and the certificate check on the name. Every packet stays on loopback: other hosts exist here
only as stubbed resolver answers."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.webhooks.signing import new_signing_secret, signature_headers, verify
from worker.notify.safe_http import (
    DeliveryResult,
    Destination,
    DestinationRefused,
    post_json,
    resolve_destination,
)

BODY = b'{"type":"job.succeeded","job_id":"j1"}'
LOCAL = frozenset({"127.0.0.1"})
PUBLIC_V4 = "93.184.216.34"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    hosts: list[str]  # every Host header line
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        hosts = self.headers.get_all("Host") or []
        self.server.requests.append(Seen(self.command, self.path, headers, hosts, body))
        self.server.behaviour(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


Behaviour = Callable[[_Handler], None]


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Behaviour:
    def respond(handler: _Handler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return respond


class Receiver(ThreadingHTTPServer):
    """A local webhook receiver: records every request and counts accepted connections."""

    daemon_threads = True

    def __init__(self, behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        self.requests: list[Seen] = []
        self.connections = 0
        self.stopping = threading.Event()
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        request = super().get_request()
        self.connections += 1
        return request

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up on a slow or huge answer is what those tests do


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(behaviour: Behaviour | None = None, tls: ssl.SSLContext | None = None) -> Receiver:
        server = Receiver(behaviour or reply(204), tls)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stopping.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every address this process tries to connect a socket to, from now on."""
    calls: list[object] = []
    real_connect, real_create = socket.socket.connect, socket.create_connection

    def connect(self: socket.socket, address: Any) -> None:
        calls.append(address)
        real_connect(self, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        calls.append(address)
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return calls


class StubResolver:
    """``getaddrinfo`` answering every name with fixed addresses, and noting each lookup."""

    def __init__(self, *ips: str) -> None:
        self.ips, self.lookups = ips, list[str]()

    def __call__(self, host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        self.lookups.append(host)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)) if ":" in ip
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in self.ips]


def deliver(url: str, allow: frozenset[str], resolver: Any = socket.getaddrinfo,
            **options: Any) -> DeliveryResult:
    """What a delivery task does: check the destination, then post to it."""
    return post_json(resolve_destination(url, allow, resolver), BODY,
                     {"webhook-id": "msg_1"}, **options)



def test_an_allow_listed_receiver_gets_the_exact_post(
        receiver: Callable[..., Receiver], connects: list[object]) -> None:
    server = receiver(reply(204))
    secret = new_signing_secret()
    headers = signature_headers(secret, "msg_1", int(time.time()), BODY)
    dest = resolve_destination(f"http://127.0.0.1:{server.port}/hook?kind=job", LOCAL)
    result = post_json(dest, BODY, headers)
    assert result == DeliveryResult(204, None, "") and result.ok
    [seen] = server.requests
    assert (seen.method, seen.path, seen.body) == ("POST", "/hook?kind=job", BODY)
    assert {name: seen.headers[name] for name in headers} == headers
    assert seen.headers["content-type"] == "application/json"
    assert seen.hosts == [f"127.0.0.1:{server.port}"]
    verify(secret, seen.headers, seen.body)  # what arrived is what the receiver can verify
    assert server.connections == 1
    assert connects  # control: the recorder sees connections (the refusals below rely on it)


def test_a_named_host_is_pinned_to_the_address_resolved_once(
        receiver: Callable[..., Receiver], connects: list[object]) -> None:
    server = receiver(reply(200, b"thanks"))
    resolver = StubResolver("127.0.0.1")
    dest = resolve_destination(f"http://Hooks.Example.:{server.port}/hook",
                               frozenset({"hooks.example"}), resolver)
    assert dest == Destination(url=f"http://Hooks.Example.:{server.port}/hook", scheme="http",
                               host="hooks.example", port=server.port, path_and_query="/hook",
                               address="127.0.0.1")
    result = post_json(dest, BODY, {"host": "evil.example"})  # a caller's Host never wins
    assert (result.status_code, result.response_excerpt) == (200, "thanks")
    assert server.requests[0].hosts == [f"hooks.example:{server.port}"]
    assert resolver.lookups == ["hooks.example"]  # once, before posting: no rebinding
    assert {tuple(address) for address in connects} == {("127.0.0.1", server.port)}



def test_the_same_receiver_not_allow_listed_is_refused_before_connecting(
        receiver: Callable[..., Receiver], connects: list[object]) -> None:
    server = receiver(reply(204))
    with pytest.raises(DestinationRefused, match="http refused for 127.0.0.1"):
        deliver(f"http://127.0.0.1:{server.port}/hook", frozenset())
    with pytest.raises(DestinationRefused, match="127.0.0.1 is a loopback address"):
        deliver(f"https://127.0.0.1:{server.port}/hook", frozenset())
    assert (server.connections, server.requests, connects) == (0, [], [])


BLOCKED = {
    "10.0.0.5": "private", "192.168.1.1": "private", "172.16.0.1": "private",
    "169.254.169.254": "cloud metadata", "100.64.0.1": "shared (CGNAT)", "::1": "loopback",
    "fe80::1": "link-local", "fd00:ec2::254": "cloud metadata",
    "::ffff:127.0.0.1": "loopback (embedded IPv4 127.0.0.1)", "0.0.0.0": "unspecified",
    "127.0.0.1": "loopback", "::": "unspecified", "fc00::1": "private",
    "224.0.0.1": "multicast", "ff02::1": "multicast",
    "::ffff:169.254.169.254": "cloud metadata (embedded IPv4 169.254.169.254)",
    "2002:a00:5::1": "private (embedded IPv4 10.0.0.5)",  # 6to4
    "64:ff9b::a9fe:a9fe": "cloud metadata (embedded IPv4 169.254.169.254)",  # NAT64
    "64:ff9b:1::a00:5": "local-use NAT64",
    "2001:db8::1": "private",  # documentation prefix
}


@pytest.mark.parametrize(("ip", "kind"), BLOCKED.items())
def test_a_name_resolving_to_a_blocked_address_is_refused_without_connecting(
        ip: str, kind: str, connects: list[object]) -> None:
    resolver = StubResolver(ip)
    with pytest.raises(DestinationRefused) as refused:
        deliver("https://hooks.example/hook", frozenset(), resolver)
    shown = ipaddress.ip_address(ip)  # as this Python writes it (::ffff:7f00:1 before 3.13)
    assert refused.value.reason == (
        f"hooks.example resolves to {shown}, which is a {kind} address: refused")
    assert resolver.lookups == ["hooks.example"] and connects == []


def test_one_public_and_one_private_address_is_refused(connects: list[object]) -> None:
    with pytest.raises(DestinationRefused, match="resolves to 10.0.0.5, which is a private"):
        deliver("https://hooks.example/hook", frozenset(), StubResolver(PUBLIC_V4, "10.0.0.5"))
    assert connects == []


@pytest.mark.parametrize("url", ["https://10.0.0.5/hook", "https://[::1]:8443/hook",
                                 "https://[::ffff:7f00:1]/hook", "https://169.254.169.254/"])
def test_ip_literals_are_checked_too(url: str, connects: list[object]) -> None:
    with pytest.raises(DestinationRefused, match=r"^\S+ is a .* address: refused$"):
        deliver(url, frozenset())  # the real getaddrinfo: numeric hosts need no DNS
    assert connects == []


@pytest.mark.parametrize(("url", "reason"), [
    ("http://hooks.example/hook", "http refused for hooks.example: webhook URLs use https"),
    ("https://user:pw@hooks.example/hook", "credentials in the URL"),
    ("https://hooks.example@10.0.0.5/hook", "credentials in the URL"),
    ("ftp://hooks.example/hook", "scheme 'ftp' refused"),
    ("hooks.example/hook", "scheme '' refused"),
    ("https:///hook", "no host"),
    ("https://hooks.example:99999/hook", "invalid port"),
    ("https://hooks.example/ho ok", "whitespace or control"),
])
def test_http_and_malformed_urls_are_refused_before_resolving(url: str, reason: str) -> None:
    resolver = StubResolver(PUBLIC_V4)
    with pytest.raises(DestinationRefused, match=reason):
        resolve_destination(url, frozenset({"other.example"}), resolver)
    assert resolver.lookups == []


def test_an_unresolvable_host_is_refused() -> None:
    def fail(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(DestinationRefused, match="cannot resolve nowhere.example"):
        resolve_destination("https://nowhere.example/", frozenset(), fail)
    with pytest.raises(DestinationRefused, match="no IPv4 or IPv6 address"):
        resolve_destination("https://nowhere.example/", frozenset(), StubResolver())


@pytest.mark.parametrize("ip", [PUBLIC_V4, "2606:2800:220:1:248:1893:25c8:1946",
                                f"::ffff:{PUBLIC_V4}", "64:ff9b::5db8:d822"])
def test_public_addresses_pass_and_the_first_is_pinned(ip: str) -> None:
    dest = resolve_destination("https://Hooks.Example/a/b?c=d#frag", frozenset(),
                               StubResolver(ip, PUBLIC_V4))
    assert dest == Destination(url="https://Hooks.Example/a/b?c=d#frag", scheme="https",
                               host="hooks.example", port=443, path_and_query="/a/b?c=d",
                               address=str(ipaddress.ip_address(ip)))


def test_the_allow_list_exempts_a_host_from_the_address_checks() -> None:
    dest = resolve_destination("https://hooks.internal/", frozenset({"HOOKS.internal."}),
                               StubResolver("10.0.0.5"))
    assert (dest.address, dest.path_and_query) == ("10.0.0.5", "/")
    with pytest.raises(DestinationRefused, match="private"):  # only that host
        resolve_destination("https://other.internal/", frozenset({"hooks.internal"}),
                            StubResolver("10.0.0.5"))



def test_a_redirect_is_not_followed(receiver: Callable[..., Receiver]) -> None:
    second = receiver(reply(204))
    first = receiver(reply(302, headers={"Location": f"http://127.0.0.1:{second.port}/hook"}))
    result = deliver(f"http://127.0.0.1:{first.port}/hook", LOCAL)
    assert result.status_code == 302 and not result.ok
    assert result.error == f"redirect not followed: HTTP 302 to 'http://127.0.0.1:{second.port}/hook'"
    assert len(first.requests) == 1
    assert (second.connections, second.requests) == (0, [])


def test_a_server_error_is_reported_with_its_status(receiver: Callable[..., Receiver]) -> None:
    server = receiver(reply(500, b"database down"))
    assert deliver(f"http://127.0.0.1:{server.port}/hook", LOCAL) == DeliveryResult(
        500, "HTTP 500", "database down")


def test_a_receiver_too_slow_to_answer_times_out(receiver: Callable[..., Receiver]) -> None:
    def stall(handler: _Handler) -> None:
        handler.server.stopping.wait(10)

    server = receiver(stall)
    started = time.monotonic()
    result = deliver(f"http://127.0.0.1:{server.port}/hook", LOCAL, timeout_s=0.3)
    assert time.monotonic() - started < 2
    assert result.status_code is None and result.response_excerpt == ""
    assert result.error is not None and "Timeout" in result.error.split(":")[0]


def test_a_receiver_dripping_bytes_is_cut_at_the_total_timeout(
        receiver: Callable[..., Receiver]) -> None:
    """Each read gets a byte in time, so only the whole-exchange deadline can stop this."""
    def drip(handler: _Handler) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
        while not handler.server.stopping.wait(0.05):
            handler.wfile.write(b"a")
            handler.wfile.flush()

    server = receiver(drip)
    started = time.monotonic()
    result = deliver(f"http://127.0.0.1:{server.port}/hook", LOCAL, timeout_s=0.5)
    assert time.monotonic() - started < 2
    assert result == DeliveryResult(None, "TimeoutError: no complete answer within 0.5 s", "")


def test_a_huge_answer_is_cut_to_the_cap(receiver: Callable[..., Receiver]) -> None:
    server = receiver(reply(200, b"x" * (8 << 20)))
    url = f"http://127.0.0.1:{server.port}/hook"
    result = deliver(url, LOCAL)
    assert (result.status_code, result.error, result.response_excerpt) == (200, None, "x" * 4096)
    assert deliver(url, LOCAL, max_response_bytes=10).response_excerpt == "x" * 10


def test_nobody_listening_is_an_error_not_an_exception() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        result = deliver(f"http://127.0.0.1:{port}/hook", LOCAL)
    assert result.status_code is None and result.error is not None
    assert result.error.startswith("ConnectError: ")



def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _deliver_over_tls(tmp_path: Path, start: Callable[..., Receiver], certified_name: str,
                      sni: list[str | None]) -> tuple[Receiver, DeliveryResult]:
    """POST to https://hooks.example (stubbed to 127.0.0.1) served with a certificate for
    ``certified_name``, trusted by the client as its only CA."""
    cert, key = _certificate(tmp_path, certified_name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def record_sni(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        sni.append(name)

    context.sni_callback = record_sni
    server = start(reply(204), tls=context)
    result = deliver(f"https://hooks.example:{server.port}/hook", frozenset({"hooks.example"}),
                     StubResolver("127.0.0.1"),
                     ssl_context=ssl.create_default_context(cafile=str(cert)))
    return server, result


def test_https_goes_to_the_pinned_address_with_sni_and_the_certificate_of_the_name(
        tmp_path: Path, receiver: Callable[..., Receiver]) -> None:
    sni: list[str | None] = []
    server, result = _deliver_over_tls(tmp_path, receiver, "hooks.example", sni)
    assert result == DeliveryResult(204, None, "")
    assert sni == ["hooks.example"]
    assert server.requests[0].hosts == [f"hooks.example:{server.port}"]


def test_https_refuses_a_certificate_for_another_name(
        tmp_path: Path, receiver: Callable[..., Receiver]) -> None:
    server, result = _deliver_over_tls(tmp_path, receiver, "other.example", [])
    assert result.status_code is None and result.error is not None
    assert result.error.startswith("ConnectError: ") and "CERTIFICATE_VERIFY_FAILED" in result.error
    assert server.requests == []
