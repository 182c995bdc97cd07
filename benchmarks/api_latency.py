"""GET /v1/jobs/{id} latency with 200 concurrent clients against a real stack.

    .venv/bin/python -m benchmarks.api_latency [SECONDS]      # prints JSON

The stack is redis-server + one uvicorn process + one idle worker (stack/local.py). One
0-epoch job is run to completion first, so the record read is a full finished one.

Two loads, from one asyncio + httpx process (so the load generator costs one event loop,
not 200 threads fighting the server for 2 cores):

- ``paced`` (the target): 200 clients, each watching a job the way a pipeline does: a GET,
  then the next one ``POLL_INTERVAL_S`` after the previous started (about 200/0.5 = 400
  requests/s offered). Target: p99 <= 20 ms.
- ``saturated`` (for reference): 200 clients firing back-to-back (closed loop). Latency there
  is queueing (Little's law: 200 in flight / throughput), so it shows the server's
  throughput, not a latency a watcher sees.

The client's own CPU time is reported, to show what it took from the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from stack.local import local_stack

CLIENTS = 200
POLL_INTERVAL_S = 0.5
TARGET_P99_MS = 20.0


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "processor": _cpu_model(),
            # Other work on the machine skews every figure: recorded at the start.
            "load_average_1m_at_start": round(os.getloadavg()[0], 2)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RawClient:
    """One keep-alive HTTP/1.1 connection spoken by hand: a request costs the load generator
    tens of microseconds of CPU, where an httpx request costs about a millisecond (which, on
    2 cores, would be CPU taken from the server being measured)."""

    def __init__(self, host: str, port: int, path: str, key: str) -> None:
        self.host, self.port = host, port
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                        f"Authorization: Bearer {key}\r\n\r\n").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def client_loop(client: RawClient, until: float, paced: bool, offset: float,
                      latencies: list[float], errors: list[int]) -> None:
    loop = asyncio.get_running_loop()
    if paced:
        await asyncio.sleep(offset)  # spread the clients over the interval
    while loop.time() < until:
        start = loop.time()
        try:
            status = await client.get()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors.append(-1)  # counted, never hidden: the server dropped us
            client.close()
            continue
        latencies.append(loop.time() - start)
        if status != 200:
            errors.append(status)
        if paced:
            await asyncio.sleep(max(0.0, start + POLL_INTERVAL_S - loop.time()))


async def load(base_url: str, path: str, seconds: float, paced: bool,
               key: str) -> dict[str, Any]:
    """Every request carries the API key, as a real client's does (its lookup is part of
    what is measured)."""
    url = httpx.URL(base_url)
    clients = [RawClient(url.host, url.port or 80, path, key) for _ in range(CLIENTS)]
    for client in clients:  # open the connections before measuring
        await client.get()
    errors: list[int] = []
    per_client: list[list[float]] = [[] for _ in range(CLIENTS)]
    until = asyncio.get_running_loop().time() + seconds
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    await asyncio.gather(*(
        client_loop(c, until, paced, POLL_INTERVAL_S * i / CLIENTS, per_client[i], errors)
        for i, c in enumerate(clients)
    ))
    elapsed = time.perf_counter() - began
    used = resource.getrusage(resource.RUSAGE_SELF)
    for client in clients:
        client.close()
    latencies = [x for xs in per_client for x in xs]
    return {
        "clients": CLIENTS,
        "requests": len(latencies),
        "errors": len(errors),
        "transport_errors": errors.count(-1),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * percentile(latencies, 0.50), 2),
        "p90_ms": round(1000 * percentile(latencies, 0.90), 2),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
        "max_ms": round(1000 * max(latencies), 2),
        "client_cpu_s": round((used.ru_utime + used.ru_stime) - (cpu.ru_utime + cpu.ru_stime), 2),
        "seconds": round(elapsed, 1),
    }


def finished_job(client: httpx.Client, model: Path) -> str:
    with model.open("rb") as f:
        response = client.post("/v1/jobs", files={"model": ("m.pt", f)},
                               data={"spec": '{"finetune": {"epochs": 0}}'})
    response.raise_for_status()
    job_id: str = response.json()["id"]
    deadline = time.monotonic() + 300
    while client.get(f"/v1/jobs/{job_id}").json()["status"] not in ("succeeded", "failed"):
        if time.monotonic() > deadline:
            raise TimeoutError("the job did not finish")
        time.sleep(0.2)
    return job_id


def tiny_model(folder: Path) -> Path:
    """An untrained 784-256-128-10 MLP as TorchScript (its weights do not matter here)."""
    import torch
    from torch import nn

    from worker.engine import scripting

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                          nn.ReLU(), nn.Linear(128, 10))
    path = folder / "mlp.pt"
    torch.jit.save(scripting.script(model), str(path))
    return path


def main(seconds: float = 15.0, extra: dict[str, Any] | None = None,
         server: str = "1 uvicorn process, SQLite job store",
         hosts: bool | None = None) -> dict[str, Any]:
    """``extra``: more settings; ``hosts`` (default: whether ``extra`` names a database):
    each process gets its own data dir, as on separate hosts (benchmarks/distributed.py:
    PostgreSQL + S3). ``python -m benchmarks.api_latency 15 noauth`` measures the same with
    ``auth`` disabled, the cost of the key check being the difference."""
    extra = extra or {}
    own_dirs = bool(extra.get("database_url")) if hosts is None else hosts
    mnist = Path(os.environ.get("PRUNER_MNIST_ROOT", "../shared/datasets")).resolve()
    with tempfile.TemporaryDirectory() as tmp, local_stack(
        Path(tmp), {"mnist_root": mnist, "worker_device": "cpu", **extra},
        own_data_dirs=own_dirs,
    ) as stack:
        job_id = finished_job(stack.client, tiny_model(Path(tmp)))
        path = f"/v1/jobs/{job_id}"
        paced = asyncio.run(load(stack.base_url, path, seconds, True, stack.api_key))
        saturated = asyncio.run(load(stack.base_url, path, seconds, False, stack.api_key))
    return {
        "benchmark": "api_latency",
        "machine": machine(),
        "endpoint": "GET /v1/jobs/{id} (a finished job)",
        "server": server,
        "paced": {**paced, "interval_s": POLL_INTERVAL_S},
        "saturated": saturated,
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": paced["p99_ms"] <= TARGET_P99_MS and paced["errors"] == 0,
    }


if __name__ == "__main__":
    noauth = sys.argv[2:3] == ["noauth"]
    result = main(float(sys.argv[1]) if len(sys.argv) > 1 else 15.0,
                  {"auth": "disabled"} if noauth else None,
                  "1 uvicorn process, SQLite job store" + (", auth disabled" if noauth else ""))
    print(json.dumps(result, indent=2))
