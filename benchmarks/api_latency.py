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
            "python": platform.python_version(), "processor": _cpu_model()}


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


async def client_loop(client: httpx.AsyncClient, url: str, until: float, paced: bool,
                      latencies: list[float], errors: list[int]) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(POLL_INTERVAL_S * (id(latencies) % 97) / 97 if paced else 0)
    while loop.time() < until:
        start = loop.time()
        response = await client.get(url)
        latencies.append(loop.time() - start)
        if response.status_code != 200:
            errors.append(response.status_code)
        if paced:
            await asyncio.sleep(max(0.0, start + POLL_INTERVAL_S - loop.time()))


async def load(base_url: str, path: str, seconds: float, paced: bool) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[int] = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        for _ in range(3):  # open the connections before measuring
            await asyncio.gather(*(client.get(path) for _ in range(CLIENTS)))
        until = asyncio.get_running_loop().time() + seconds
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        per_client = [[] for _ in range(CLIENTS)]  # type: list[list[float]]
        await asyncio.gather(*(
            client_loop(client, path, until, paced, per_client[i], errors)
            for i in range(CLIENTS)
        ))
        elapsed = time.perf_counter() - began
        used = resource.getrusage(resource.RUSAGE_SELF)
    latencies = [x for xs in per_client for x in xs]
    return {
        "clients": CLIENTS,
        "requests": len(latencies),
        "errors": len(errors),
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

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                          nn.ReLU(), nn.Linear(128, 10))
    path = folder / "mlp.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def main(seconds: float = 15.0) -> dict[str, Any]:
    mnist = Path(os.environ.get("PRUNER_MNIST_ROOT", "../shared/datasets")).resolve()
    with tempfile.TemporaryDirectory() as tmp, local_stack(
        Path(tmp), {"mnist_root": mnist, "worker_device": "cpu"}
    ) as stack:
        job_id = finished_job(stack.client, tiny_model(Path(tmp)))
        path = f"/v1/jobs/{job_id}"
        paced = asyncio.run(load(stack.base_url, path, seconds, paced=True))
        saturated = asyncio.run(load(stack.base_url, path, seconds, paced=False))
    return {
        "benchmark": "api_latency",
        "machine": machine(),
        "endpoint": "GET /v1/jobs/{id} (a finished job)",
        "server": "1 uvicorn process, SQLite job store",
        "paced": {**paced, "interval_s": POLL_INTERVAL_S},
        "saturated": saturated,
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": paced["p99_ms"] <= TARGET_P99_MS and paced["errors"] == 0,
    }


if __name__ == "__main__":
    result = main(float(sys.argv[1]) if len(sys.argv) > 1 else 15.0)
    print(json.dumps(result, indent=2))
