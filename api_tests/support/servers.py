"""What a fixture does when its real server (PostgreSQL, the S3 server, chromium) cannot
start: locally the test skips, saying why; in CI (``.ci/run`` sets
``PRUNER_REQUIRE_SERVERS=1``) it errors, so a missing server cannot pass as a green run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn

import pytest

REQUIRE_SERVERS = "PRUNER_REQUIRE_SERVERS"


def servers_required(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a missing server fails its tests: ``1`` yes, ``0`` or unset no; any other
    value is refused rather than guessed at."""
    value = environ.get(REQUIRE_SERVERS, "0")
    if value not in ("0", "1"):
        raise pytest.UsageError(f"{REQUIRE_SERVERS} must be 0 or 1, not {value!r}")
    return value == "1"


def server_missing(what: str, reason: object,
                   environ: Mapping[str, str] = os.environ) -> NoReturn:
    """Skip the test (or, with ``PRUNER_REQUIRE_SERVERS=1``, fail it) because ``what``
    could not start, for ``reason``."""
    message = f"{what} unavailable: {reason}"
    if servers_required(environ):
        pytest.fail(f"{message} ({REQUIRE_SERVERS}=1: every server must run)", pytrace=False)
    pytest.skip(message)
