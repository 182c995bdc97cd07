"""The notify-URL policy: which webhook URLs a submission or a tenant may name.

Plain stdlib, shared by the API (which answers 422 at submission) and by anything else that
stores a URL. Names are resolved, and every resolved address checked again, at each delivery
(``worker/notify/safe_http.py``): DNS can change between submission and delivery.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit


def notify_url_problem(url: str, allowed_hosts: Collection[str]) -> str | None:
    """Why ``url`` can never be delivered, or None: not https (http only to an allow-listed
    host), credentials in it, or an address literal that is not public."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        return "must be an https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if host in allowed_hosts:
        return None
    if parts.scheme != "https":
        return "must be https (http only to hosts on the webhook allow-list)"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not address.is_global:
        return f"{address} is not a public address (loopback, private, link-local)"
    return None
