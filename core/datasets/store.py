"""Dataset records in the job store's database (``core/storage/sql.py``: SQLite or
PostgreSQL), beside the jobs so that one transaction sees both.

- ``create``: idempotency (the key scoped to the tenant, as for jobs) and the tenant's
  storage quota (jobs' files and datasets together) decided inside the insert's transaction;
- ``get`` / ``list``: only the tenant's own (another tenant's dataset does not exist);
- ``delete``: refused while a queued or running job of the tenant names the dataset, decided
  in the same transaction as the delete; ``JobStore.create`` checks the dataset in the job
  insert's transaction, and the two serialise on the dataset's row, so a submission and a
  delete that race end either with the job refused or with the delete refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum

from core.datasets.record import DatasetRecord
from core.jobs.record import JobStatus
from core.storage.jobs_sql import decode_cursor, encode_cursor
from core.storage.protocols import IdempotencyConflict
from core.storage.sql import SqlAccess, SqlConn, micros
from core.tenants.quotas import Quota, QuotaExceeded, QuotaKind
from core.tenants.scheduling import scoped_key, stored_bytes

MAX_PAGE = 200


class DeleteOutcome(StrEnum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"
    IN_USE = "in_use"


@dataclass(frozen=True)
class DeleteResult:
    outcome: DeleteOutcome
    jobs: list[str] = field(default_factory=list)  # IN_USE: the jobs that use it


def dataset_of(record_json: str) -> str | None:
    """The dataset a job record's spec names (None: the default, MNIST)."""
    data = json.loads(record_json).get("spec", {}).get("data") or {}
    value = data.get("dataset")
    return value if isinstance(value, str) else None


class DatasetStore:
    def __init__(self, sql: SqlAccess) -> None:
        self.sql = sql

    def create(self, record: DatasetRecord, *, idempotency_key: str | None = None,
               request_hash: str | None = None,
               quota: Quota | None = None) -> tuple[DatasetRecord, bool]:
        key = scoped_key(record.tenant, idempotency_key)
        with self.sql.write() as conn:
            if key is not None:
                row = conn.execute("SELECT request_hash, record FROM datasets"
                                   " WHERE idempotency_key = ?", (key,)).fetchone()
                if row is not None:
                    if row[0] != request_hash:
                        raise IdempotencyConflict(idempotency_key)
                    return DatasetRecord.model_validate_json(row[1]), False
            if quota is not None and quota.max_stored_bytes is not None:
                stored = stored_bytes(conn, record.tenant)
                if stored + record.bytes > quota.max_stored_bytes:
                    raise QuotaExceeded(QuotaKind.STORAGE, quota.max_stored_bytes, stored, 3600)
            conn.execute(
                "INSERT INTO datasets (id, tenant, created_us, bytes, idempotency_key,"
                " request_hash, record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.tenant, micros(record.created_at), record.bytes, key,
                 request_hash, record.model_dump_json()))
        return record, True

    def get(self, dataset_id: str, tenant: str) -> DatasetRecord | None:
        with self.sql.read() as conn:
            row = conn.execute("SELECT record FROM datasets WHERE id = ? AND tenant = ?",
                               (dataset_id, tenant)).fetchone()
        return None if row is None else DatasetRecord.model_validate_json(row[0])

    def list(self, tenant: str, *, limit: int = 20,
             cursor: str | None = None) -> tuple[list[DatasetRecord], str | None]:
        """Newest first; ``ValueError`` for a cursor this store did not hand out."""
        limit = max(1, min(limit, MAX_PAGE))
        sql = "SELECT created_us, id, record FROM datasets WHERE tenant = ?"
        params: list[object] = [tenant]
        if cursor is not None:
            created_us, last_id = decode_cursor(cursor)
            sql += " AND (created_us < ? OR (created_us = ? AND id < ?))"
            params += [created_us, created_us, last_id]
        sql += " ORDER BY created_us DESC, id DESC LIMIT ?"
        with self.sql.read() as conn:
            rows = conn.execute(sql, (*params, limit + 1)).fetchall()
        page = [DatasetRecord.model_validate_json(r[2]) for r in rows[:limit]]
        if len(rows) <= limit:
            return page, None
        return page, encode_cursor(int(rows[limit - 1][0]), str(rows[limit - 1][1]))

    def digests(self) -> set[str]:
        """The sha256 of every stored dataset, all tenants' (for the workers' caches)."""
        with self.sql.read() as conn:
            rows = conn.execute("SELECT record FROM datasets").fetchall()
        return {DatasetRecord.model_validate_json(r[0]).sha256 for r in rows}

    def delete(self, dataset_id: str, tenant: str) -> DeleteResult:
        """Delete first, then look for users and roll back if there are any: the DELETE locks
        the row (PostgreSQL), so a job insert that holds it (``JobStore.create``) commits
        first and is seen here, and one that comes after finds no dataset."""
        try:
            with self.sql.write() as conn:
                deleted = conn.execute("DELETE FROM datasets WHERE id = ? AND tenant = ?",
                                       (dataset_id, tenant)).rowcount
                users = _unfinished_users(conn, dataset_id, tenant) if deleted else []
                if users:
                    raise _InUse(users)
        except _InUse as exc:
            return DeleteResult(DeleteOutcome.IN_USE, exc.jobs)
        return DeleteResult(DeleteOutcome.DELETED if deleted else DeleteOutcome.NOT_FOUND)


class _InUse(Exception):
    """Rolls the delete back (raised inside its transaction)."""

    def __init__(self, jobs: list[str]) -> None:
        super().__init__(f"used by {jobs}")
        self.jobs = jobs


def _unfinished_users(conn: SqlConn, dataset_id: str, tenant: str) -> list[str]:
    rows = conn.execute(
        "SELECT id, record FROM jobs WHERE tenant = ? AND status IN (?, ?) ORDER BY id",
        (tenant, JobStatus.QUEUED.value, JobStatus.RUNNING.value)).fetchall()
    return [str(job_id) for job_id, record in rows if dataset_of(str(record)) == dataset_id]
