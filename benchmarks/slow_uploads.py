"""200 slow uploads against one API process: are they cut, and does the API keep answering?

    .venv/bin/python -m benchmarks.slow_uploads [POLLERS]      # prints JSON

redis-server and one uvicorn process (no worker: nothing is accepted), on loopback only.
The uploads are cut at ``upload_rate_window_s`` (10 s here, 30 s by default) for sending 1
byte a second, under ``upload_min_bytes_per_s`` (1024). Meanwhile ``POLLERS`` clients
(default 50) poll ``GET /v1/jobs`` every 0.5 s as in ``benchmarks/api_latency.py``'s paced
load; their latency is measured before the uploads start (baseline), while all 200 are held
open (``while_held``) and from half a second before they are all cut at once
(``around_the_cut``). Target: the paced p99 stays within 20 ms (the API's latency goal), every
upload ends 408 within the window plus a second, and no scratch file is left. Bounded: about
30 s of load.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.api_latency import POLL_INTERVAL_S, TARGET_P99_MS, RawClient, machine, percentile
from core.settings import Settings
from core.tenants.tenancy import local_admin_key
from stack import processes as P

SLOW_CLIENTS = 200
WINDOW_S = 10.0
BOUNDARY = "slowbench3a9"
HEAD = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"; filename="m.pt"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n").encode()


async def slow_upload(port: int, key: str) -> tuple[int, float]:
    """One client sending 1 byte a second until the server answers: (status, seconds)."""
    began = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                 f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                 f"Content-Length: 1000000\r\n\r\n".encode() + HEAD)

    async def drip() -> None:
        while True:
            await asyncio.sleep(1.0)
            writer.write(b"\0")
            await writer.drain()

    dripping = asyncio.create_task(drip())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=WINDOW_S * 3)
        return int(head.split(b" ", 2)[1]), time.monotonic() - began
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return -1, time.monotonic() - began
    finally:
        dripping.cancel()
        writer.close()


def summary(latencies: list[float]) -> dict[str, Any]:
    return {"requests": len(latencies),
            "p50_ms": round(1000 * percentile(latencies, 0.50), 2),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
            "max_ms": round(1000 * max(latencies), 2)}


async def poll(port: int, key: str, pollers: int, seconds: float,
               split_at: float | None = None) -> dict[str, Any]:
    """Paced polling for ``seconds``; with ``split_at`` (a loop time), the latencies of
    requests started before and after it are summarised apart too."""
    clients = [RawClient("127.0.0.1", port, "/v1/jobs", key) for _ in range(pollers)]
    for client in clients:
        await client.get()
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    latencies: list[float] = []
    started: list[float] = []
    errors = 0

    async def one(client: RawClient, offset: float) -> None:
        nonlocal errors
        await asyncio.sleep(offset)
        while loop.time() < until:
            start = loop.time()
            try:
                if await client.get() != 200:
                    errors += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                client.close()
                continue
            latencies.append(loop.time() - start)
            started.append(start)
            await asyncio.sleep(max(0.0, start + POLL_INTERVAL_S - loop.time()))

    await asyncio.gather(*(one(c, POLL_INTERVAL_S * i / pollers) for i, c in enumerate(clients)))
    for client in clients:
        client.close()
    result = {"pollers": pollers, "errors": errors, **summary(latencies)}
    if split_at is not None:
        pairs = list(zip(started, latencies, strict=True))
        result["while_held"] = summary([x for t, x in pairs if t < split_at])
        result["around_the_cut"] = summary([x for t, x in pairs if t >= split_at])
    return result


async def measure(port: int, key: str, pollers: int) -> dict[str, Any]:
    baseline = await poll(port, key, pollers, 8.0)
    loop = asyncio.get_running_loop()
    cut_due = loop.time() + WINDOW_S  # the uploads' window ends about now
    uploads = [asyncio.create_task(slow_upload(port, key)) for _ in range(SLOW_CLIENTS)]
    await asyncio.sleep(1.0)  # all connected and dripping before the measured period
    during = await poll(port, key, pollers, WINDOW_S, split_at=cut_due - 0.5)
    results = await asyncio.gather(*uploads)
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"baseline": baseline, "during_slow_uploads": during, "upload_statuses": statuses,
            "upload_cut_after_s_max": round(max(s for _, s in results), 2)}


def main(pollers: int = 50) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with P.running_redis(root) as redis:
            settings = Settings.of(data_dir=root / "data", redis_url=redis.meta["url"],
                                   upload_rate_window_s=WINDOW_S, upload_min_bytes_per_s=1024)
            key, _ = local_admin_key(settings)
            port = P.free_port()
            api = P.start_api(settings.as_env(), "127.0.0.1", port, root / "logs")
            try:
                P.wait_until_ready(api)
                result = asyncio.run(measure(port, key, pollers))
                time.sleep(1.0)
                jobs = root / "data" / "jobs"
                left = sorted(str(p) for p in jobs.rglob("*")) if jobs.exists() else []
                tracebacks = api.log_path.read_text().count("Traceback")
            finally:
                P.stop(api)
    during = result["during_slow_uploads"]
    return {"benchmark": "slow_uploads", "machine": machine(),
            "server": "1 uvicorn process, SQLite job store, loopback",
            "slow_clients": SLOW_CLIENTS, "window_s": WINDOW_S, "min_bytes_per_s": 1024,
            **result, "files_left": left, "tracebacks_logged": tracebacks,
            "target_p99_ms": TARGET_P99_MS,
            "p99_within_target": during["p99_ms"] <= TARGET_P99_MS,
            "all_cut_with_408": result["upload_statuses"] == {"408": SLOW_CLIENTS}}


if __name__ == "__main__":
    print(json.dumps(main(*(int(a) for a in sys.argv[1:2])), indent=2))
