"""Webhook deliveries: durable rows, at-least-once, retried with backoff for over a day.

A job that carries ``notify`` (its own, or its tenant's default, copied into the record at
submission) is marked ``notify_due`` by the job store once it is terminal and not yet
``notified``. The dispatcher (worker/notify/dispatcher.py) turns each such job into one
delivery row (``INSERT ... ON CONFLICT (job_id) DO NOTHING``, then ``notified``: a crash
between the two repeats the insert harmlessly), then attempts due rows. An attempt first
leases its row by compare-and-set on ``next_attempt_us``, so two dispatchers never send the
same attempt; a dispatcher that dies mid-attempt leaves a lease that expires, and the row is
attempted again (at-least-once: receivers deduplicate on ``webhook-id``).

Backoff: ``base * 2**(n-1)`` seconds after the n-th failed attempt, capped at ``max``, times a
random factor in [0.5, 1] (jitter, so that a receiver coming back is not hit by every
retry at once); the row fails for good once ``give_up_s`` (over 24 h by default) have passed
since it was recorded.
"""

from __future__ import annotations

import json
import random
import secrets
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from core.jobs.record import JobRecord
from core.storage.sql import SqlAccess, from_micros, micros

ATTEMPT_LEASE_US = 60_000_000  # an attempt's lease: well over the delivery timeout
MAX_ATTEMPTS_KEPT = 50


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Attempt(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    error: str | None = None
    duration_ms: float


class Delivery(BaseModel):
    id: str = Field(description="The webhook-id header: the same on every retry.")
    job_id: str
    tenant: str
    event: str
    url: str
    state: DeliveryState
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="Null once delivered or failed.")
    attempts: list[Attempt]


def backoff_s(failures: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait after the ``failures``-th failed attempt (1-based)."""
    doublings = min(failures - 1, 64)  # past that the cap holds anyway (no float overflow)
    return float(min(max_s, base_s * 2.0 ** doublings) * rng.uniform(0.5, 1.0))


def event_body(record: JobRecord, now: datetime) -> str:
    """The JSON a receiver gets: Standard Webhooks' ``type`` / ``timestamp`` / ``data``."""
    path = f"/v1/jobs/{record.id}"
    data = {
        "id": record.id,
        "status": record.status.value,
        "created_at": record.created_at.isoformat(),
        "finished_at": None if record.finished_at is None else record.finished_at.isoformat(),
        "error": None if record.error is None else record.error.model_dump(mode="json"),
        "model_format": None if record.model_format is None else record.model_format.value,
        "model_sha256": record.model_sha256,
        "links": {"self": path, "report": f"{path}/report", "model": f"{path}/model"},
    }
    return json.dumps({"type": f"job.{record.status.value}", "timestamp": now.isoformat(),
                       "data": data}, separators=(",", ":"))


_COLUMNS = "id, job_id, tenant, event, url, state, created_us, next_attempt_us, attempts"


class DeliveryStore:
    def __init__(self, sql: SqlAccess) -> None:
        self.sql = sql

    def add(self, record: JobRecord, url: str, now: datetime) -> bool:
        """Record the delivery of ``record``'s terminal event, due now; False when it was
        recorded before."""
        with self.sql.write() as conn:
            cursor = conn.execute(
                "INSERT INTO deliveries (id, job_id, tenant, event, url, body, state,"
                " created_us, next_attempt_us, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id) DO NOTHING",
                ("msg_" + secrets.token_hex(12), record.id, record.tenant, record.status.value,
                 url, event_body(record, now), DeliveryState.PENDING.value, micros(now),
                 micros(now), "[]"),
            )
            return cursor.rowcount > 0

    def for_job(self, job_id: str) -> list[Delivery]:
        with self.sql.read() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE job_id = ?",
                                (job_id,)).fetchall()
        return [_delivery(r) for r in rows]

    def due(self, now: datetime, limit: int = 20) -> list[tuple[Delivery, str, int]]:
        """Pending deliveries whose next attempt is due: (delivery, body, lease token)."""
        with self.sql.read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS}, body FROM deliveries WHERE state = 'pending'"
                " AND next_attempt_us <= ? ORDER BY next_attempt_us LIMIT ?",
                (micros(now), limit)).fetchall()
        return [(_delivery(r), str(r[9]), int(r[7])) for r in rows]

    def lease(self, delivery_id: str, token: int, now: datetime) -> bool:
        """Take the row for one attempt: compare-and-set on the next attempt time."""
        with self.sql.write() as conn:
            cursor = conn.execute(
                "UPDATE deliveries SET next_attempt_us = ? WHERE id = ? AND state = 'pending'"
                " AND next_attempt_us = ?", (micros(now) + ATTEMPT_LEASE_US, delivery_id, token))
            return cursor.rowcount == 1

    def record_attempt(self, delivery_id: str, attempt: Attempt, state: DeliveryState,
                       next_attempt: datetime | None) -> None:
        with self.sql.write() as conn:
            row = conn.execute("SELECT attempts FROM deliveries WHERE id = ?",
                               (delivery_id,)).fetchone()
            if row is None:
                return
            attempts = [*json.loads(row[0]), attempt.model_dump(mode="json")]
            conn.execute(
                "UPDATE deliveries SET state = ?, next_attempt_us = ?, attempts = ? WHERE id = ?",
                (state.value, None if next_attempt is None else micros(next_attempt),
                 json.dumps(attempts[-MAX_ATTEMPTS_KEPT:]), delivery_id))


def _delivery(row: tuple[object, ...]) -> Delivery:
    id_, job_id, tenant, event, url, state, created, next_us, attempts = row[:9]
    created_at = from_micros(int(str(created)))
    assert created_at is not None
    return Delivery(
        id=str(id_), job_id=str(job_id), tenant=str(tenant), event=str(event), url=str(url),
        state=DeliveryState(str(state)), created_at=created_at,
        next_attempt_at=(None if state != DeliveryState.PENDING or next_us is None
                         else from_micros(int(str(next_us)))),
        attempts=[Attempt.model_validate(a) for a in json.loads(str(attempts))],
    )
