"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from core.jobs.public import Health, Readiness
from core.queue import HEARTBEAT_PREFIX
from core.settings import Settings
from core.storage.protocols import BlobStore, JobStore, StoreUnavailable
from service.auth import AdminDep
from service.deps import BlobsDep, MetricsDep, RedisDep, SettingsDep, StoreDep
from service.errors import AUTH_ERRORS, NotReady, problem_responses
from service.metrics import render_metrics

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The API process is alive."""
    return Health()


def _storage_writable(settings: Settings) -> str:
    probe = settings.data_dir / f".readyz-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return f"data_dir {settings.data_dir} is not writable: {exc.strerror or exc}"
    return "ok"


async def _redis_and_worker(redis: Any) -> tuple[str, str]:
    try:
        await redis.ping()
        async for _ in redis.scan_iter(match=HEARTBEAT_PREFIX + "*", count=1000):
            return "ok", "ok"
    except (RedisError, OSError) as exc:
        return f"unreachable: {type(exc).__name__}", "unknown: Redis is unreachable"
    return "ok", "no worker heartbeat in Redis (no worker seen recently)"


def _reachable(store: JobStore | BlobStore) -> str:
    try:
        store.ping()
    except StoreUnavailable as exc:
        return f"unreachable: {exc}"
    return "ok"


@router.get("/readyz", response_model=Readiness, responses=problem_responses(NotReady))
async def readyz(
    settings: SettingsDep, redis: RedisDep, store: StoreDep, blobs: BlobsDep
) -> Readiness:
    """Ready: Redis, the job database and the file store answer, the data dir is writable
    and a worker was seen recently."""
    redis_state, worker_state = await _redis_and_worker(redis)
    checks = {
        "redis": redis_state,
        "storage": await run_in_threadpool(_storage_writable, settings),
        "database": await run_in_threadpool(_reachable, store),
        "objects": await run_in_threadpool(_reachable, blobs),
        "worker": worker_state,
    }
    failed = [name for name, state in checks.items() if state != "ok"]
    if failed:
        raise NotReady(f"not ready: {', '.join(failed)}", extra={"checks": checks},
                       headers={"Retry-After": "5"})
    return Readiness(ready=True, checks=checks)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}},
                       **problem_responses(*AUTH_ERRORS)})
async def metrics(
    who: AdminDep, settings: SettingsDep, store: StoreDep, redis: RedisDep,
    api_metrics: MetricsDep
) -> Response:
    """Prometheus metrics (an ``admin`` key): jobs by status and tenant, job durations,
    queue depth, upload bytes."""
    body = await render_metrics(settings, store, redis, api_metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
