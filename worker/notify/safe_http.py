"""Deliver a webhook to a user-given URL without letting that URL reach our own network.

Two steps, so a caller can refuse before it signs or records anything:

- ``resolve_destination(url, allow_hosts)`` checks the URL (https only; http only for an
  allow-listed host; no user:password@), resolves the host once, and refuses
  (``DestinationRefused``) when ANY address it resolves to is loopback, private, link-local,
  cloud metadata, multicast, reserved, unspecified, shared (CGNAT) or otherwise not global,
  including those hidden in IPv4-mapped, 6to4 and NAT64 IPv6 forms (the policy, shared with
  the submission check, is ``core/webhooks/addresses.py``). An allow-listed host (an
  operator's own receiver, or a test's 127.0.0.1) skips the address checks, nothing else.
- ``post_json(destination, body, headers)`` connects to the address chosen then, never
  resolving again (a second lookup could answer differently: DNS rebinding), with the
  original host in ``Host`` and, for https, in TLS SNI and certificate verification. It follows
  no redirect, bounds the whole exchange by ``timeout_s``, reads at most ``max_response_bytes``
  of the answer, and never raises for a network failure: it returns a ``DeliveryResult``.

Standard library and httpx only (no torch, no Celery): the task that calls it stays thin.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from core.webhooks.addresses import IPAddress, blocked_kind, normalise_host

Resolver = Callable[..., list[Any]]

DEFAULT_PORTS = {"https": 443, "http": 80}


class DestinationRefused(Exception):
    """A webhook URL we will not deliver to; ``reason`` says why (shown to the user)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Destination:
    """A checked webhook URL and the one address every delivery attempt connects to."""

    url: str  # as the user gave it
    scheme: str  # "https", or "http" for an allow-listed host
    host: str  # lower case, ASCII (IDNA), no brackets, no trailing dot
    port: int
    path_and_query: str  # "/path?query", never empty
    address: str  # the resolved IP this destination is pinned to


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery attempt got: a status code, or an error before any status."""

    status_code: int | None
    error: str | None  # None exactly when the receiver answered 2xx
    response_excerpt: str  # the start of the answer's body, at most max_response_bytes

    @property
    def ok(self) -> bool:
        """Delivered: the receiver answered 2xx."""
        return self.status_code is not None and 200 <= self.status_code < 300


def _parse(url: str, allow_hosts: frozenset[str]) -> tuple[str, str, int, str, bool]:
    """(scheme, host, port, path_and_query, allow-listed) of ``url``, or refuse it."""
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise DestinationRefused("the URL contains whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise DestinationRefused(f"scheme {parts.scheme!r} refused: webhook URLs use https")
    if "@" in parts.netloc:
        raise DestinationRefused("credentials in the URL (user:password@) are refused")
    if not parts.hostname or not normalise_host(parts.hostname):
        raise DestinationRefused("the URL has no host")
    host = normalise_host(parts.hostname)
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise DestinationRefused(f"host {parts.hostname!r} is not a valid name") from None
    allowed = host in {normalise_host(h) for h in allow_hosts}
    if scheme == "http" and not allowed:
        raise DestinationRefused(f"http refused for {host}: webhook URLs use https")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise DestinationRefused(f"invalid port in {parts.netloc!r}") from None
    path = parts.path or "/"
    return scheme, host, port, path + (f"?{parts.query}" if parts.query else ""), allowed


def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DestinationRefused(f"cannot resolve {host}: {exc}") from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]))
        except ValueError:
            raise DestinationRefused(f"{host} resolves to {sockaddr[0]!r}, not an IP") from None
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise DestinationRefused(f"cannot resolve {host}: no IPv4 or IPv6 address")
    return addresses


def resolve_destination(
    url: str, allow_hosts: frozenset[str], resolver: Resolver = socket.getaddrinfo
) -> Destination:
    """Check ``url`` and pin it to one resolved address, or raise ``DestinationRefused``.

    ``allow_hosts`` holds host names and IP literals exempt from the address checks (and the
    only ones http is allowed for). ``resolver`` has ``socket.getaddrinfo``'s signature; every
    address it returns must pass, so a name answering with one public and one private
    address is refused.
    """
    scheme, host, port, path_and_query, allowed = _parse(url, allow_hosts)
    addresses = _resolve(host, port, resolver)
    if not allowed:
        for ip in addresses:
            kind = blocked_kind(ip)
            if kind is not None:
                shown = host if host == str(ip) else f"{host} resolves to {ip}, which"
                raise DestinationRefused(f"{shown} is a {kind} address: refused")
    return Destination(url=url, scheme=scheme, host=host, port=port,
                       path_and_query=path_and_query, address=str(addresses[0]))


def _bracketed(host_or_ip: str) -> str:
    return f"[{host_or_ip}]" if ":" in host_or_ip else host_or_ip


class _Deadline:
    """Cuts the connection when the whole exchange outlasts its budget.

    httpx's timeouts apply to each connect, read and write: a receiver that drips a byte a
    second could hold a worker for hours. httpcore's ``trace`` extension hands over the socket
    once connected; a timer shuts that down when the time is up, which wakes any blocked read.
    """

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            raw = info["return_value"].get_extra_info("socket")
            if raw is None:
                return
            with self._lock:
                # A dup survives the TLS wrap (which detaches the original) and shutdown on it
                # ends the one connection both share.
                self._sock = raw.dup()
                if self.expired:
                    self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: nothing left to cut

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown()

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            if self._sock is not None:
                self._sock.close()


def _read_capped(chunks: Iterable[bytes], limit: int) -> bytes:
    """At most ``limit`` bytes of a body; a failure part-way keeps what had arrived."""
    data = b""
    try:
        for chunk in chunks:
            data += chunk
            if len(data) >= limit:
                break
    except (httpx.HTTPError, OSError):
        pass  # the status already answered the delivery; the excerpt is best effort
    return data[:limit]


def _failure(status: int, location: str | None) -> str | None:
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"redirect not followed: HTTP {status} to {(location or '')[:200]!r}"
    return f"HTTP {status}"


def post_json(
    dest: Destination,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_s: float = 5.0,
    max_response_bytes: int = 4096,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryResult:
    """POST ``body`` (JSON) with ``headers`` to ``dest``'s pinned address; never raises for the
    network: a failure before any status comes back as ``DeliveryResult(None, "Type: msg", "")``.

    ``timeout_s`` bounds connecting, each read and write, and the exchange as a whole.
    ``ssl_context`` replaces the trusted CAs (default: httpx's, certifi); tests pass their own.
    """
    default_port = DEFAULT_PORTS[dest.scheme] == dest.port
    host_header = _bracketed(dest.host) + ("" if default_port else f":{dest.port}")
    pinned_url = f"{dest.scheme}://{_bracketed(dest.address)}:{dest.port}{dest.path_and_query}"
    sent = httpx.Headers({"Content-Type": "application/json", "Accept-Encoding": "identity",
                          "User-Agent": "pruning-service-webhooks/1"})
    sent.update(headers)
    for framing in ("Content-Length", "Transfer-Encoding"):
        sent.pop(framing, None)  # httpx frames the body itself; a caller's value could lie
    sent["Host"] = host_header  # replaces any Host the caller gave, whatever its case
    with _Deadline(timeout_s) as deadline:
        extensions: dict[str, Any] = {"trace": deadline.trace}
        if dest.scheme == "https":
            extensions["sni_hostname"] = dest.host  # SNI and certificate check use the name
        try:
            # trust_env=False: no proxy from the environment gets to choose where we connect.
            with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False,
                              verify=ssl_context or True) as client, \
                    client.stream("POST", pinned_url, content=body, headers=sent,
                                  extensions=extensions) as response:
                excerpt = _read_capped(response.iter_raw(), max_response_bytes)
                status, location = response.status_code, response.headers.get("location")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            if deadline.expired:
                return DeliveryResult(None, f"TimeoutError: no complete answer within "
                                            f"{timeout_s:g} s", "")
            return DeliveryResult(None, f"{type(exc).__name__}: {exc}", "")
    return DeliveryResult(status, _failure(status, location),
                          excerpt.decode("utf-8", errors="replace"))
