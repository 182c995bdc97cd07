"""Prometheus metrics, computed at scrape time from the shared store and Redis.

Job counts and durations come from the job records, not from in-process counters: jobs end
in worker processes, and the API may run several processes, so only the store sees them all.
The upload byte counter is the API process's own (a counter per process is what Prometheus
expects; sum it across instances).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from core.jobs.record import JobStatus
from core.settings import Settings
from core.storage.protocols import Histogram, JobStore
from core.tenants.scheduling import counts_by_tenant
from service.deps import ApiMetrics

DURATION_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)


def new_api_metrics() -> ApiMetrics:
    registry = CollectorRegistry(auto_describe=True)
    upload_bytes = Counter("pruner_upload_bytes", "Bytes of model files accepted by this API "
                           "process.", registry=registry)
    uploads_cut = Counter("pruner_uploads_cut", "Uploads this API process stopped receiving "
                          "before their end: the client disconnected, sent too slowly, or took "
                          "too long.", ["reason"], registry=registry)
    for reason in ("client_disconnected", "too_slow", "too_long"):
        uploads_cut.labels(reason)  # every series from the first scrape, at 0
    return ApiMetrics(registry=registry, upload_bytes=upload_bytes, uploads_cut=uploads_cut)


class _Scrape:
    """A one-off collector: what ``generate_latest`` reads for one scrape."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def _job_metrics(
    counts: dict[JobStatus, int], durations: dict[JobStatus, Histogram],
    by_tenant: dict[tuple[str, str], int],
) -> list[Metric]:
    jobs = GaugeMetricFamily("pruner_jobs", "Jobs by status (from the job store).",
                             labels=["status"])
    for status, n in counts.items():
        jobs.add_metric([status.value], n)
    tenants = GaugeMetricFamily(
        "pruner_tenant_jobs", "Queued and running jobs by tenant (the 50 busiest tenants by "
        "name, the rest as `_other`).", labels=["tenant", "status"])
    for (tenant, state), n in sorted(by_tenant.items()):
        tenants.add_metric([tenant, state], n)
    hist = HistogramMetricFamily("pruner_job_duration_seconds",
                                 "Run time (started to finished) of ended jobs.",
                                 labels=["status"])
    for status, (cumulative, count, total) in durations.items():
        buckets = [(repr(b), c) for b, c in zip(DURATION_BUCKETS_S, cumulative, strict=True)]
        hist.add_metric([status.value], [*buckets, ("+Inf", count)], total)
    return [jobs, tenants, hist]


async def _queue_metrics(settings: Settings, redis: Any) -> list[Metric]:
    up = GaugeMetricFamily("pruner_broker_up", "1 when Redis answered this scrape.")
    depth = GaugeMetricFamily("pruner_queue_depth", "Tasks waiting in the broker queue.",
                              labels=["queue"])
    try:
        depth.add_metric([settings.queue_name], int(await redis.llen(settings.queue_name)))
        up.add_metric([], 1)
        return [up, depth]
    except (RedisError, OSError):
        up.add_metric([], 0)
        return [up]


def _store_snapshot(
    store: JobStore,
) -> tuple[dict[JobStatus, int], dict[JobStatus, Histogram], dict[tuple[str, str], int]]:
    with store.sql().read() as conn:
        by_tenant = counts_by_tenant(conn)
    return store.counts_by_status(), store.duration_histogram(DURATION_BUCKETS_S), by_tenant


async def render_metrics(
    settings: Settings, store: JobStore, redis: Any, api: ApiMetrics
) -> bytes:
    counts, durations, by_tenant = await run_in_threadpool(_store_snapshot, store)
    scraped = _job_metrics(counts, durations, by_tenant) + await _queue_metrics(settings, redis)
    own = generate_latest(api.registry)
    return own + generate_latest(_Scrape(scraped))
