"""500 concurrent 0-epoch submissions against a real local stack: nothing accepted is lost.

    .venv/bin/python -m benchmarks.burst_500 [--jobs 500] [--workers 2] [--max-queue-depth 100]

All submissions are fired at once from one asyncio + httpx process (one connection each).
Each must be accepted (202) or refused with 429 (queue full) / 503 (broker down), both with
Retry-After; any other status counts as an error. Then every accepted job is polled until it
is terminal. Reported: accepted, refused (by status), errors, submit latency p50/p99,
completed (succeeded), failed, lost (accepted but its record is gone or it never finished
within the drain deadline), and the drain time.

The model is a small MLP (784-32-10, TorchScript) so that the upload is not what is measured;
the queue depth limit is the setting ``max_queue_depth`` (a worker runs one job process at a
time, a few seconds each on this CPU, so a deep queue only takes longer to drain).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.api_latency import machine, percentile
from stack.local import local_stack

SPEC = '{"finetune": {"epochs": 0}}'


def small_model(folder: Path) -> bytes:
    import torch
    from torch import nn

    from worker.engine import scripting

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    path = folder / "small.pt"
    torch.jit.save(scripting.script(model), str(path))
    return path.read_bytes()


async def submit_all(base_url: str, body: bytes, jobs: int,
                     key: str) -> list[tuple[int, float, str]]:
    limits = httpx.Limits(max_connections=jobs, max_keepalive_connections=jobs)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120,
                                 headers={"Authorization": f"Bearer {key}"}) as client:

        async def one(_: int) -> tuple[int, float, str]:
            start = time.perf_counter()
            try:
                response = await client.post("/v1/jobs", files={"model": ("m.pt", body)},
                                             data={"spec": SPEC})
            except httpx.HTTPError as exc:
                return -1, time.perf_counter() - start, type(exc).__name__
            seconds = time.perf_counter() - start
            if response.status_code == 202:
                return 202, seconds, response.json()["id"]
            return response.status_code, seconds, response.headers.get("retry-after", "")

        return await asyncio.gather(*(one(i) for i in range(jobs)))


def drain(client: httpx.Client, ids: list[str], deadline_s: float) -> dict[str, Any]:
    """Poll until every accepted job is terminal (or the deadline passes)."""
    pending = set(ids)
    outcome: Counter[str] = Counter()
    last: dict[str, str] = {}
    start = time.monotonic()
    while pending and time.monotonic() - start < deadline_s:
        for job_id in list(pending):
            response = client.get(f"/v1/jobs/{job_id}")
            if response.status_code == 404:
                outcome["record_missing"] += 1
                pending.discard(job_id)
            else:
                last[job_id] = response.json()["status"]
                if last[job_id] in ("succeeded", "failed", "cancelled"):
                    outcome[last[job_id]] += 1
                    pending.discard(job_id)
        time.sleep(1.0)
    return {"outcomes": dict(outcome), "not_terminal": len(pending),
            "not_terminal_by_status": dict(Counter(last[j] for j in pending if j in last)),
            "drain_s": round(time.monotonic() - start, 1)}


def main(jobs: int, workers: int, max_queue_depth: int, deadline_s: float,
         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``extra``: more settings (benchmarks/distributed.py: PostgreSQL + S3, and then each
    process has its own data dir, as on separate hosts)."""
    mnist = Path(os.environ.get("PRUNER_MNIST_ROOT", "../shared/datasets")).resolve()
    # One tenant makes the whole burst: its per-minute limit must not be what refuses it.
    settings = {"mnist_root": mnist, "worker_device": "cpu", "max_queue_depth": max_queue_depth,
                "tenant_submissions_per_minute": 100_000, **(extra or {})}
    with tempfile.TemporaryDirectory() as tmp, local_stack(
        Path(tmp), settings, workers=workers, own_data_dirs=bool(extra)
    ) as stack:
        body = small_model(Path(tmp))
        began = time.perf_counter()
        results = asyncio.run(submit_all(stack.base_url, body, jobs, stack.api_key))
        submit_s = time.perf_counter() - began
        ids = [detail for status, _, detail in results if status == 202]
        drained = drain(stack.client, ids, deadline_s)
    statuses = Counter(status for status, _, _ in results)
    refused = {str(s): n for s, n in statuses.items() if s in (429, 503)}
    missing_retry_after = sum(1 for s, _, d in results if s in (429, 503) and not d)
    latencies = [seconds for _, seconds, _ in results]
    missing = drained["outcomes"].get("record_missing", 0)
    return {
        "benchmark": "burst_500",
        "machine": machine(),
        "jobs_submitted": jobs,
        "workers": workers,
        "max_queue_depth": max_queue_depth,
        "accepted": len(ids),
        "refused": refused,
        "refused_without_retry_after": missing_retry_after,
        "errors": {str(s): n for s, n in statuses.items() if s not in (202, 429, 503)},
        "submit_wall_s": round(submit_s, 2),
        "submit_p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "submit_p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "completed": drained["outcomes"].get("succeeded", 0),
        "failed": drained["outcomes"].get("failed", 0),
        # Lost = accepted but its record is gone. Jobs still queued/running when the drain
        # deadline passed are listed apart (not finished within the time given, not lost).
        "lost": missing,
        "unfinished_at_drain_deadline": drained["not_terminal_by_status"],
        "drain_deadline_s": deadline_s,
        "drain_s": drained["drain_s"],
        "ok": missing == 0 and not missing_retry_after
        and all(s in (202, 429, 503) for s in statuses),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-queue-depth", type=int, default=100)
    parser.add_argument("--deadline-s", type=float, default=3600)
    args = parser.parse_args()
    print(json.dumps(main(args.jobs, args.workers, args.max_queue_depth, args.deadline_s),
                     indent=2))
