"""The tenant-aware job queries both job stores run inside their own transactions.

- ``check_quota``: a tenant's queued jobs, stored bytes and submissions in the last 60 s,
  counted inside the create transaction (which both stores serialise), so a burst can never
  overshoot a limit.
- ``next_queued``: fair scheduling across tenants. A worker that receives a job's task runs
  the job this rule picks, not necessarily that job (every queued job has one task, so every
  job still gets a turn): among tenants with queued jobs and below their running limit, the
  one with the fewest running jobs, ties broken by the tenant whose latest job started
  longest ago (never first); that tenant's oldest queued job. A burst of one tenant therefore
  delays another tenant's job by at most the job running when it arrives, per worker.
- ``notify_due``: terminal jobs with a webhook not yet recorded as a delivery.
"""

from __future__ import annotations

from core.jobs.record import JobRecord, JobStatus
from core.storage.sql import SqlConn, micros
from core.tenants.quotas import Quota, QuotaExceeded, QuotaKind, RunningLimits

MINUTE_US = 60_000_000


IndexedColumns = tuple[str, int | None, int | None, bool, str, int, int]


def indexed_columns(record: JobRecord) -> IndexedColumns:
    """The columns both job stores keep beside the record (besides id and created_us), in
    their INSERT/UPDATE order: status, started and finished (microseconds), files expired,
    tenant, stored bytes (0 once its files expired), and whether a webhook is due."""
    started = None if record.started_at is None else micros(record.started_at)
    finished = None if record.finished_at is None else micros(record.finished_at)
    kept = record.files_expired_at is None
    stored = record.upload_bytes + record.output_bytes if kept else 0
    due = record.notify is not None and record.status.terminal and not record.notified
    return (record.status.value, started, finished, not kept, record.tenant, stored,
            int(due))


def scoped_key(tenant: str, key: str | None) -> str | None:
    """The stored idempotency key: scoped to its tenant (tenant names hold no '/')."""
    return None if key is None else f"{tenant}/{key}"


def stored_bytes(conn: SqlConn, tenant: str) -> int:
    """What ``quota_storage`` counts: the files of the tenant's unexpired jobs and its
    datasets."""
    (jobs,) = conn.execute("SELECT COALESCE(SUM(stored_bytes), 0) FROM jobs WHERE tenant = ?",
                           (tenant,)).fetchone()
    (datasets,) = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM datasets WHERE tenant = ?",
                               (tenant,)).fetchone()
    return int(jobs) + int(datasets)


def check_quota(conn: SqlConn, record: JobRecord, quota: Quota, now_us: int) -> None:
    tenant = record.tenant
    if quota.max_queued is not None:
        (queued,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE tenant = ? AND status = ?",
                                 (tenant, JobStatus.QUEUED.value)).fetchone()
        if int(queued) >= quota.max_queued:
            raise QuotaExceeded(QuotaKind.QUEUED, quota.max_queued, int(queued), 30)
    if quota.max_stored_bytes is not None:
        stored = stored_bytes(conn, tenant)
        if stored + record.upload_bytes > quota.max_stored_bytes:
            raise QuotaExceeded(QuotaKind.STORAGE, quota.max_stored_bytes, stored, 3600)
    if quota.submissions_per_minute is not None:
        since = now_us - MINUTE_US
        count, oldest = conn.execute(
            "SELECT COUNT(*), MIN(created_us) FROM jobs WHERE tenant = ? AND created_us > ?",
            (tenant, since)).fetchone()
        if int(count) >= quota.submissions_per_minute:
            wait_us = (int(oldest) + MINUTE_US - now_us) if oldest is not None else MINUTE_US
            raise QuotaExceeded(QuotaKind.RATE, quota.submissions_per_minute, int(count),
                                max(1, -(-wait_us // 1_000_000)))


def next_queued(conn: SqlConn, running_limits: RunningLimits) -> str | None:
    """The queued job the fairness rule runs next, or None when nothing queued may start
    now; ``running_limits`` is asked once, for the tenants with queued jobs."""
    queued = [str(t) for (t,) in conn.execute(
        "SELECT DISTINCT tenant FROM jobs WHERE status = ?", (JobStatus.QUEUED.value,)
    ).fetchall()]
    if not queued:
        return None
    running = {str(t): int(n) for t, n in conn.execute(
        "SELECT tenant, COUNT(*) FROM jobs WHERE status = ? GROUP BY tenant",
        (JobStatus.RUNNING.value,)).fetchall()}
    limits = running_limits(queued)
    candidates = []
    for tenant in queued:
        limit = limits.get(tenant, 0)
        busy = running.get(tenant, 0)
        if limit and busy >= limit:
            continue
        (last,) = conn.execute("SELECT MAX(started_us) FROM jobs WHERE tenant = ?",
                               (tenant,)).fetchone()
        candidates.append((busy, -1 if last is None else int(last), tenant))
    if not candidates:
        return None
    _, _, chosen = min(candidates)
    row = conn.execute(
        "SELECT id FROM jobs WHERE tenant = ? AND status = ? ORDER BY created_us, id LIMIT 1",
        (chosen, JobStatus.QUEUED.value)).fetchone()
    return None if row is None else str(row[0])


def notify_due(conn: SqlConn, limit: int = 100) -> list[JobRecord]:
    rows = conn.execute("SELECT record FROM jobs WHERE notify_due = 1 LIMIT ?",
                        (limit,)).fetchall()
    return [JobRecord.model_validate_json(r[0]) for r in rows]


MAX_TENANT_LABELS = 50
OTHER_TENANTS = "_other"


def counts_by_tenant(conn: SqlConn) -> dict[tuple[str, str], int]:
    """Queued and running jobs per (tenant, status), for the metrics' ``tenant`` label: the
    ``MAX_TENANT_LABELS`` busiest tenants by name, the rest summed as ``_other`` (no tenant
    name starts with ``_``; bounded cardinality however many tenants there are)."""
    rows = conn.execute(
        "SELECT tenant, status, COUNT(*) FROM jobs WHERE status IN (?, ?) GROUP BY tenant, status",
        (JobStatus.QUEUED.value, JobStatus.RUNNING.value)).fetchall()
    totals: dict[str, int] = {}
    for tenant, _, n in rows:
        totals[str(tenant)] = totals.get(str(tenant), 0) + int(n)
    named = set(sorted(totals, key=lambda t: (-totals[t], t))[:MAX_TENANT_LABELS])
    out: dict[tuple[str, str], int] = {}
    for tenant, status, n in rows:
        label = str(tenant) if str(tenant) in named else OTHER_TENANTS
        out[(label, str(status))] = out.get((label, str(status)), 0) + int(n)
    return out
