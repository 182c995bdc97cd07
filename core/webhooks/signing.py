"""Signing and verifying webhook deliveries, the Standard Webhooks way (standardwebhooks.com).

A delivery carries three headers: ``webhook-id`` (the message id, the same on every retry),
``webhook-timestamp`` (integer Unix seconds of this attempt) and ``webhook-signature``: one or
more space-separated ``v1,<base64>`` entries, each an HMAC-SHA256 over
``f"{id}.{timestamp}."`` followed by the raw body bytes. The key is the base64 after the
``whsec_`` prefix of the endpoint's secret. Several entries let a sender sign with an old and a
new secret while a receiver rotates.

The sender (the worker) calls ``signature_headers``; a receiver calls ``verify`` (re-exported
for users as ``client.webhooks``). Standard library only: the receiver side runs anywhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24  # the spec asks for 24 to 64 random bytes
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
DEFAULT_TOLERANCE_S = 300  # the reference libraries' five minutes


class WebhookVerificationError(Exception):
    """A delivery failed verification; the message says which check failed (answer 401)."""


def new_signing_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    """The HMAC key of ``secret``: the base64 after the ``whsec_`` prefix, decoded.

    Raises ``ValueError`` for a secret that is not base64 or decodes to nothing: that is a
    configuration mistake, not a bad delivery.
    """
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError(
            f"webhook secret is not base64 after {SECRET_PREFIX!r}: "
            "use the secret exactly as the service returned it"
        ) from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` entry for one delivery: ``v1,<base64 HMAC-SHA256>``."""
    digest = _digest(_secret_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers a delivery of ``body`` carries."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, msg_id, timestamp, body),
    }


def _required(headers: Mapping[str, str]) -> tuple[str, str, str]:
    lowered = {name.lower(): value for name, value in headers.items()}
    wanted = (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
    missing = [name for name in wanted if not lowered.get(name)]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    return lowered[ID_HEADER], lowered[TIMESTAMP_HEADER], lowered[SIGNATURE_HEADER]


def _check_timestamp(raw: str, tolerance_s: int, now: float) -> int:
    text = raw.strip()
    if not text.isascii() or not text.isdigit():
        raise WebhookVerificationError(
            f"invalid {TIMESTAMP_HEADER} {raw!r}: expected integer Unix seconds"
        )
    timestamp = int(text)
    if timestamp < now - tolerance_s:
        raise WebhookVerificationError(
            f"{TIMESTAMP_HEADER} too old: {timestamp} is {now - timestamp:.0f} s before now "
            f"(tolerance {tolerance_s} s); a replayed or long-delayed delivery"
        )
    if timestamp > now + tolerance_s:
        raise WebhookVerificationError(
            f"{TIMESTAMP_HEADER} too new: {timestamp} is {timestamp - now:.0f} s after now "
            f"(tolerance {tolerance_s} s); check the clocks of sender and receiver"
        )
    return timestamp


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` entries of a ``webhook-signature`` header; others are skipped."""
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue
    return found


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check that ``body`` with ``headers`` is a delivery signed with ``secret``, and recent.

    ``headers`` is any mapping (names compared case-insensitively: a framework's request
    headers or a plain dict); ``body`` must be the raw bytes as received, before any JSON
    parsing. Returns None when one ``v1`` signature matches and the timestamp is within
    ``tolerance_s`` of ``now`` (default: the clock) either way; raises
    ``WebhookVerificationError`` naming the failed check otherwise.
    """
    msg_id, raw_timestamp, signature_header = _required(headers)
    current = time.time() if now is None else now
    timestamp = _check_timestamp(raw_timestamp, tolerance_s, current)
    expected = _digest(_secret_key(secret), msg_id, timestamp, body)
    candidates = _v1_signatures(signature_header)
    if not candidates:
        raise WebhookVerificationError(f"{SIGNATURE_HEADER} holds no v1 signature")
    # Check every entry (no early exit): the time taken says nothing about which one matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError(
            f"no matching signature among {len(candidates)} v1 entr"
            f"{'y' if len(candidates) == 1 else 'ies'}: wrong secret, or the body was altered"
        )
