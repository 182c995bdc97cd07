"""Lifespan state and the dependencies that read it.

The lifespan builds the store, the blob store, the Celery handle (used only to send tasks by
name) and a Redis client once per process, and yields them as the request state; routes get
them through the typed aliases below (``StoreDep`` ...).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, FastAPI, Request
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from core.queue import celery_config
from core.settings import Settings
from core.storage.backends import open_blob_store, open_job_store
from core.storage.protocols import BlobStore, JobStore
from core.tenants import tenancy
from core.tenants.store import AccountStore
from core.tenants.tenancy import auth_pepper
from core.webhooks.deliveries import DeliveryStore

# A Redis that is down must answer 503 fast (connection refused, or no connection within
# 1 s); a busy one must not: under a burst, requests queue for one of a few connections
# (a blocking pool: the default pool raises once it has handed out its connections).
REDIS_CONNECT_TIMEOUT_S = 1.0
REDIS_WAIT_S = 10.0
REDIS_CONNECTIONS = 32


@dataclass
class ApiMetrics:
    registry: CollectorRegistry
    upload_bytes: Counter
    uploads_cut: Counter  # by reason: client_disconnected, too_slow, too_long


class ServiceState(TypedDict):
    settings: Settings
    store: JobStore
    blobs: BlobStore
    celery: Celery
    redis: aioredis.Redis
    metrics: ApiMetrics
    pepper: str
    accounts: AccountStore
    deliveries: DeliveryStore


def build_state(settings: Settings, metrics: ApiMetrics) -> ServiceState:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_job_store(settings)
    return ServiceState(
        settings=settings,
        store=store,
        pepper=auth_pepper(settings),
        accounts=tenancy.accounts(store),
        deliveries=tenancy.deliveries(store),
        blobs=open_blob_store(settings),
        celery=Celery("pruning-api", config_source=celery_config(settings)),
        redis=aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=REDIS_CONNECTIONS,
            timeout=REDIS_WAIT_S,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_WAIT_S,
            # A pooled connection goes stale when Redis restarts: retry once on a fresh
            # connection, so the first request after a restart is not a false 503. A Redis
            # that is really down refuses the retry at once.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )),
        metrics=metrics,
    )


def make_lifespan(settings: Settings, metrics: ApiMetrics) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[ServiceState]:
        state = build_state(settings, metrics)
        # Everything imported and built so far lives as long as the process: take it out of
        # the cyclic GC's view, or each full collection walks ~85k objects (~50-120 ms here),
        # a pause every request in flight waits out (Instagram's gc.freeze pattern).
        gc.collect()
        gc.freeze()
        try:
            yield state
        finally:
            await state["redis"].aclose()
            state["celery"].close()
            state["store"].close()

    return lifespan


# The dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in
# the thread pool, a hop (~100 us) per dependency per request for a mere attribute read.
def _state(request: Request) -> Any:
    return request.state


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = _state(request).settings
    return settings


async def get_store(request: Request) -> JobStore:
    store: JobStore = _state(request).store
    return store


async def get_blobs(request: Request) -> BlobStore:
    blobs: BlobStore = _state(request).blobs
    return blobs


async def get_celery(request: Request) -> Celery:
    celery: Celery = _state(request).celery
    return celery


async def get_redis(request: Request) -> aioredis.Redis:
    client: aioredis.Redis = _state(request).redis
    return client


async def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = _state(request).metrics
    return metrics


async def get_accounts(request: Request) -> AccountStore:
    accounts: AccountStore = _state(request).accounts
    return accounts


async def get_deliveries(request: Request) -> DeliveryStore:
    deliveries: DeliveryStore = _state(request).deliveries
    return deliveries


AccountsDep = Annotated[AccountStore, Depends(get_accounts)]
DeliveriesDep = Annotated[DeliveryStore, Depends(get_deliveries)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[JobStore, Depends(get_store)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
