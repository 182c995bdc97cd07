"""Webhook signatures: the Standard Webhooks published test vector, and each way a delivery
must fail verification, with the message that says which check it failed."""

from __future__ import annotations

import base64
import re

import pytest

from client.webhooks import WebhookVerificationError as ClientError
from client.webhooks import verify as client_verify
from core.webhooks.signing import (
    WebhookVerificationError,
    new_signing_secret,
    sign,
    signature_headers,
    verify,
)

# The vector of the reference libraries (standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py::test_sign_function).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NOW = 1_700_000_000
BODY = b'{"type":"job.succeeded","job_id":"j1"}'


def signed(secret: str, body: bytes = BODY, timestamp: int = NOW) -> dict[str, str]:
    return signature_headers(secret, "msg_1", timestamp, body)


def test_the_published_vector_signs_and_verifies() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP),
               "webhook-signature": VECTOR_SIGNATURE}
    verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP)


def test_the_vector_fails_with_its_last_signature_byte_changed() -> None:
    """Control: the vector check above can fail."""
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP),
               "webhook-signature": VECTOR_SIGNATURE[:-2] + "A="}
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP)


def test_a_new_secret_is_whsec_and_24_random_bytes() -> None:
    secret = new_signing_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
    assert new_signing_secret() != secret


def test_signature_headers_carry_id_timestamp_and_signature() -> None:
    secret = new_signing_secret()
    headers = signed(secret)
    assert headers == {"webhook-id": "msg_1", "webhook-timestamp": str(NOW),
                       "webhook-signature": sign(secret, "msg_1", NOW, BODY)}
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", headers["webhook-signature"])


def test_round_trip_with_headers_in_any_case() -> None:
    secret = new_signing_secret()
    headers = {name.upper(): value for name, value in signed(secret).items()}
    verify(secret, headers, BODY, now=NOW)
    client_verify(secret, headers, BODY, now=NOW + 299)  # the receiver's import is the same
    assert ClientError is WebhookVerificationError


def test_a_tampered_body_is_refused() -> None:
    secret = new_signing_secret()
    with pytest.raises(WebhookVerificationError, match="no matching signature .* altered"):
        verify(secret, signed(secret), BODY.replace(b"j1", b"j2"), now=NOW)


def test_a_wrong_secret_is_refused() -> None:
    headers = signed(new_signing_secret())
    with pytest.raises(WebhookVerificationError, match="no matching signature among 1 v1 entry"):
        verify(new_signing_secret(), headers, BODY, now=NOW)


def test_a_stale_timestamp_is_refused() -> None:
    secret = new_signing_secret()
    verify(secret, signed(secret, timestamp=NOW - 300), BODY, now=NOW)  # the edge still passes
    with pytest.raises(WebhookVerificationError, match=r"too old: .* 301 s before now"):
        verify(secret, signed(secret, timestamp=NOW - 301), BODY, now=NOW)


def test_a_future_timestamp_is_refused() -> None:
    secret = new_signing_secret()
    verify(secret, signed(secret, timestamp=NOW + 300), BODY, now=NOW)
    with pytest.raises(WebhookVerificationError, match=r"too new: .* 301 s after now"):
        verify(secret, signed(secret, timestamp=NOW + 301), BODY, now=NOW)


def test_the_tolerance_is_a_parameter() -> None:
    secret = new_signing_secret()
    with pytest.raises(WebhookVerificationError, match=r"tolerance 10 s"):
        verify(secret, signed(secret, timestamp=NOW - 11), BODY, tolerance_s=10, now=NOW)


def test_a_non_integer_timestamp_is_refused() -> None:
    secret = new_signing_secret()
    headers = signed(secret) | {"webhook-timestamp": "1700000000.5"}
    with pytest.raises(WebhookVerificationError, match="invalid webhook-timestamp"):
        verify(secret, headers, BODY, now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_header_is_named(missing: str) -> None:
    secret = new_signing_secret()
    headers = {name: value for name, value in signed(secret).items() if name != missing}
    with pytest.raises(WebhookVerificationError, match=f"^missing header\\(s\\): {missing}$"):
        verify(secret, headers, BODY, now=NOW)


def test_no_headers_at_all_names_all_three() -> None:
    with pytest.raises(WebhookVerificationError,
                       match="missing header.*webhook-id, webhook-timestamp, webhook-signature"):
        verify(new_signing_secret(), {}, BODY, now=NOW)


def test_one_matching_signature_among_several_passes() -> None:
    secret, old_secret = new_signing_secret(), new_signing_secret()
    headers = signed(secret)
    headers["webhook-signature"] = " ".join([
        sign(old_secret, "msg_1", NOW, BODY),  # a rotated-out secret
        "v2," + headers["webhook-signature"].removeprefix("v1,"),  # another version: skipped
        "v1,not-base64!",  # malformed: skipped
        headers["webhook-signature"],
    ])
    verify(secret, headers, BODY, now=NOW)


def test_several_signatures_none_matching_is_refused() -> None:
    secret = new_signing_secret()
    headers = signed(secret)
    headers["webhook-signature"] = " ".join(
        sign(new_signing_secret(), "msg_1", NOW, BODY) for _ in range(3))
    with pytest.raises(WebhookVerificationError, match="among 3 v1 entries"):
        verify(secret, headers, BODY, now=NOW)


def test_a_header_without_v1_entries_is_refused() -> None:
    secret = new_signing_secret()
    headers = signed(secret) | {"webhook-signature": "v1a,abc v2,def"}
    with pytest.raises(WebhookVerificationError, match="holds no v1 signature"):
        verify(secret, headers, BODY, now=NOW)


def test_a_malformed_secret_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not base64"):
        sign("whsec_%%%", "msg_1", NOW, BODY)
    with pytest.raises(ValueError, match="empty"):
        sign("whsec_", "msg_1", NOW, BODY)
