"""The PostgreSQL store's pool after the server restarts: the idle connections it cut are
noticed when handed out (no round trip: core/storage/postgres._checkout) and replaced, so the
first read after a restart answers rather than failing on a dead connection."""

from __future__ import annotations

from typing import Any

import pytest

from core.storage.postgres import PostgresJobStore

pytestmark = pytest.mark.slow  # restarts the session's PostgreSQL: out of the inner loop


def test_the_first_reads_after_a_restart_get_fresh_connections(postgres_server: Any) -> None:
    store = PostgresJobStore(postgres_server.url())
    try:
        assert store.get("nope") is None
        pool = store._pool_here()
        held = [pool.getconn() for _ in range(3)]  # three idle connections in the pool
        for conn in held:
            pool.putconn(conn)
        postgres_server.restart_immediate()  # cuts all three
        for _ in range(5):  # every read answers: a pool that kept them would fail here
            assert store.get("nope") is None
        assert store.list(limit=1) == ([], None)
        assert all(c.closed for c in held)  # the cut ones were dropped, not reused
    finally:
        store.close()
