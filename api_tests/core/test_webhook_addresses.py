"""The notify-URL policy (core/webhooks/addresses.py): every form of a non-public address the
resolver would read is refused as the literal it stands for; public names and addresses
pass (they are resolved and judged again at delivery)."""

from __future__ import annotations

import pytest

from core.webhooks.addresses import normalise_host, notify_url_problem

# Each is loopback, unspecified or private once read as the resolver reads it.
REFUSED = [
    "https://localhost/", "https://LOCALHOST:80/", "https://LocalHost./hook",
    "https://api.localhost/", "https://0x7f000001/", "https://2130706433/", "https://127.1/",
    "https://0177.0.0.1/", "https://0/", "https://0x7f.1/", "https://[::1]/",
    "https://[64:ff9b::7f00:1]/", "https://[2002:7f00:1::]/", "https://[::ffff:10.0.0.1]/",
    "https://10.1/", "https://0xa9fea9fe/",  # 169.254.169.254, cloud metadata
]
ALLOWED = [
    "https://hooks.example.com/x", "https://93.184.216.34/", "https://0x5db8d822/",
    "https://[2606:2800:220:1::]/", "https://localhost.example.com/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_address_forms_are_refused(url: str) -> None:
    assert notify_url_problem(url, frozenset()) is not None


@pytest.mark.parametrize("url", ALLOWED)
def test_public_names_and_addresses_pass(url: str) -> None:
    assert notify_url_problem(url, frozenset()) is None


def test_the_allow_list_matches_any_form_of_its_hosts() -> None:
    assert notify_url_problem("http://127.1:8080/", frozenset({"127.0.0.1"})) is None


@pytest.mark.parametrize(("host", "canonical"), [
    ("0x7f000001", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"), ("0", "0.0.0.0"), ("[::1]", "::1"), ("Example.COM.", "example.com"),
    ("1.2.3.4.5", "1.2.3.4.5"), ("08.0.0.1", "08.0.0.1"),  # not numbers inet_aton reads
])
def test_hosts_are_read_as_the_resolver_reads_them(host: str, canonical: str) -> None:
    assert normalise_host(host) == canonical
