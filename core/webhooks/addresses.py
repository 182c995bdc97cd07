"""The notify-URL policy: which webhook URLs a submission or a tenant may name.

Plain stdlib, shared by the API (which answers 422 at submission) and by the worker's
delivery (``worker/notify/safe_http.py``), which resolves the name and checks every resolved
address again at each attempt: DNS can change between submission and delivery.

A host is judged in the form the resolver would use: ``normalise_host`` reads the numeric
forms ``inet_aton`` accepts (``127.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1``,
``0``) as the IPv4 address they name, and ``blocked_kind`` judges the IPv4 address hidden in
IPv4-mapped, 6to4 and NAT64 IPv6 forms. ``localhost`` and any ``*.localhost`` name
(RFC 6761) are loopback whatever their case.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, ...
                       ipaddress.ip_address("fd00:ec2::254")})  # AWS over IPv6
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the low 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a network's own translator
_KINDS: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    ("unspecified", lambda ip: ip.is_unspecified),
    ("loopback", lambda ip: ip.is_loopback),
    ("link-local", lambda ip: ip.is_link_local),
    ("multicast", lambda ip: ip.is_multicast),
    ("shared (CGNAT)", lambda ip: ip.version == 4 and ip in _SHARED),
    ("private", lambda ip: ip.is_private),
    ("reserved", lambda ip: ip.is_reserved),
    ("non-global", lambda ip: not ip.is_global),  # what the named kinds above missed
)
# What inet_aton may read as a number: decimal, octal (0...) or hex (0x...) parts, 1 to 4.
_NUMERIC_V4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$")


def normalise_host(host: str) -> str:
    """The form hosts are compared and judged in: lower case, no brackets or trailing dot,
    an IP address (any numeric IPv4 form the resolver accepts) in its canonical text."""
    name = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if _NUMERIC_V4.fullmatch(name):
        try:
            return str(ipaddress.IPv4Address(socket.inet_aton(name)))
        except OSError:
            pass
    return name


def is_localhost(name: str) -> bool:
    """``localhost`` or a name under it (RFC 6761): loopback without asking DNS."""
    return name == "localhost" or name.endswith(".localhost")


def blocked_kind(ip: IPAddress) -> str | None:
    """Why we never connect to ``ip`` ("loopback", "private", ...), or None for a public one."""
    if ip in _METADATA:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return "local-use NAT64"
        embedded = ip.ipv4_mapped if ip.ipv4_mapped is not None else ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
        if embedded is not None:
            # Such an address reaches the IPv4 one inside it: judge that one instead.
            kind = blocked_kind(embedded)
            return None if kind is None else f"{kind} (embedded IPv4 {embedded})"
    return next((kind for kind, test in _KINDS if test(ip)), None)


def host_problem(host: str) -> str | None:
    """Why a normalised host is never a webhook destination, or None (a name: judged again,
    resolved, at delivery)."""
    if is_localhost(host):
        return f"{host} is a loopback name"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    kind = blocked_kind(address)
    return None if kind is None else f"{address} is not a public address ({kind})"


def notify_url_problem(url: str, allowed_hosts: Collection[str]) -> str | None:
    """Why ``url`` can never be delivered, or None: not https (http only to an allow-listed
    host), credentials in it, a loopback name, or an address literal (in any form the
    resolver reads) that is not public."""
    parts = urlsplit(url)
    host = normalise_host(parts.hostname or "")
    if parts.scheme not in ("https", "http") or not host:
        return "must be an https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if host in {normalise_host(h) for h in allowed_hosts}:
        return None
    if parts.scheme != "https":
        return "must be https (http only to hosts on the webhook allow-list)"
    return host_problem(host)
