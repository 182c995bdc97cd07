"""The switch that turns a missing real server from a skip (locally) into a failure (CI:
``.ci/run`` sets ``PRUNER_REQUIRE_SERVERS=1``), api_tests/support/servers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from api_tests.support.servers import REQUIRE_SERVERS, server_missing, servers_required

ROOT = Path(__file__).resolve().parent.parent


def test_unset_or_0_means_a_missing_server_skips() -> None:
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL unavailable: no initdb"):
        server_missing("PostgreSQL", "no initdb", environ={})
    with pytest.raises(pytest.skip.Exception):
        server_missing("PostgreSQL", "no initdb", environ={REQUIRE_SERVERS: "0"})


def test_1_means_a_missing_server_fails() -> None:
    with pytest.raises(pytest.fail.Exception, match="chromium unavailable: not on PATH"):
        server_missing("chromium", "not on PATH", environ={REQUIRE_SERVERS: "1"})


def test_any_other_value_is_refused() -> None:
    with pytest.raises(pytest.UsageError, match="must be 0 or 1, not 'yes'"):
        servers_required({REQUIRE_SERVERS: "yes"})


def test_ci_sets_the_switch_before_it_runs_the_tests() -> None:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    switch = lines.index(f"export {REQUIRE_SERVERS}=1")
    tests = next(i for i, line in enumerate(lines) if line.endswith("./run test"))
    assert switch < tests
