"""Tenants and API keys in the job store's database (``core/storage/sql.py``: SQLite or PostgreSQL).

``authenticate`` is the hot path (every request): one primary-key read of the key's row and a
digest compare in constant time; it writes nothing. ``touch`` records ``last_used``, which the
API does at most once a minute per key, from its thread pool (a write per request would
serialise every request on SQLite's write lock). Revocation is a
column set on the row, read by the next request: it takes effect at once, on every API
process. Unknown ids still pay for a digest so that timing says nothing about which ids exist.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from core.storage.sql import SqlAccess, from_micros, micros
from core.tenants.accounts import (
    KEY_PREFIX,
    ApiKey,
    CreatedKey,
    Notify,
    Scope,
    Tenant,
    TenantLimits,
    digest_matches,
    key_digest,
    key_id_of,
    new_key,
    valid_tenant,
)
from core.webhooks.signing import new_signing_secret

LAST_USED_EVERY_US = 60_000_000
# What ``_key`` reads, in its order.
_KEY_COLUMNS = "key_id, tenant, scopes, name, created_us, last_used_us, revoked_us"
_DUMMY_DIGEST = "0" * 64


class UnknownTenant(KeyError):
    pass


class TenantExists(ValueError):
    pass


class AccountStore:
    def __init__(self, sql: SqlAccess) -> None:
        self.sql = sql

    # --- tenants ------------------------------------------------------------------------

    def create_tenant(self, name: str, now: datetime, limits: TenantLimits | None = None,
                      notify: Notify | None = None, *, exist_ok: bool = False) -> Tenant:
        if not valid_tenant(name):
            raise ValueError(f"tenant name {name!r}: 1-63 of a-z, 0-9, '_' and '-', "
                             "starting with a letter or digit")
        tenant = Tenant(name=name, created_at=now, limits=limits or TenantLimits(),
                        notify=notify, signing_secret=new_signing_secret())
        with self.sql.write() as conn:
            found = conn.execute("SELECT record FROM tenants WHERE name = ?", (name,)).fetchone()
            if found is not None:
                if exist_ok:
                    return Tenant.model_validate_json(found[0])
                raise TenantExists(name)
            conn.execute("INSERT INTO tenants (name, created_us, record) VALUES (?, ?, ?)",
                         (name, micros(now), tenant.model_dump_json()))
        return tenant

    def get_tenant(self, name: str) -> Tenant | None:
        with self.sql.read() as conn:
            row = conn.execute("SELECT record FROM tenants WHERE name = ?", (name,)).fetchone()
        return None if row is None else Tenant.model_validate_json(row[0])

    def list_tenants(self) -> list[Tenant]:
        with self.sql.read() as conn:
            rows = conn.execute("SELECT record FROM tenants ORDER BY name").fetchall()
        return [Tenant.model_validate_json(r[0]) for r in rows]

    def update_tenant(self, name: str, *, limits: TenantLimits | None = None,
                      notify: Notify | None = None, clear_notify: bool = False) -> Tenant:
        with self.sql.write() as conn:
            row = conn.execute("SELECT record FROM tenants WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UnknownTenant(name)
            tenant = Tenant.model_validate_json(row[0])
            if limits is not None:
                merged = {**tenant.limits.model_dump(), **limits.model_dump(exclude_unset=True)}
                tenant.limits = TenantLimits.model_validate(merged)
            if notify is not None or clear_notify:
                tenant.notify = notify
            conn.execute("UPDATE tenants SET record = ? WHERE name = ?",
                         (tenant.model_dump_json(), name))
        return tenant

    def rotate_signing_secret(self, name: str) -> Tenant:
        with self.sql.write() as conn:
            row = conn.execute("SELECT record FROM tenants WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UnknownTenant(name)
            tenant = Tenant.model_validate_json(row[0])
            tenant.signing_secret = new_signing_secret()
            conn.execute("UPDATE tenants SET record = ? WHERE name = ?",
                         (tenant.model_dump_json(), name))
        return tenant

    def limits_of(self, names: Iterable[str]) -> dict[str, TenantLimits]:
        wanted = sorted(set(names))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        with self.sql.read() as conn:
            rows = conn.execute(f"SELECT record FROM tenants WHERE name IN ({marks})",
                                wanted).fetchall()
        tenants = [Tenant.model_validate_json(r[0]) for r in rows]
        return {t.name: t.limits for t in tenants}

    # --- keys ---------------------------------------------------------------------------

    def create_key(self, tenant: str, scopes: Iterable[Scope], pepper: str, now: datetime,
                   name: str = "") -> CreatedKey:
        """A new key for an existing tenant; the returned ``key`` is shown once, never
        stored."""
        chosen = sorted(set(scopes))
        if not chosen:
            raise ValueError("a key needs at least one scope")
        token, key_id = new_key()
        with self.sql.write() as conn:
            if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (tenant,)).fetchone() is None:
                raise UnknownTenant(tenant)
            conn.execute(
                "INSERT INTO api_keys (key_id, tenant, digest, scopes, name, created_us)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, tenant, key_digest(pepper, token), json.dumps(chosen), name,
                 micros(now)),
            )
        info = ApiKey(key_id=key_id, prefix=KEY_PREFIX + key_id, tenant=tenant,
                      scopes=[Scope(s) for s in chosen], name=name, created_at=now)
        return CreatedKey(key=token, info=info)

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys"
        params: tuple[str, ...] = ()
        if tenant is not None:
            sql, params = sql + " WHERE tenant = ?", (tenant,)
        with self.sql.read() as conn:
            rows = conn.execute(sql + " ORDER BY created_us, key_id", params).fetchall()
        return [_key(row) for row in rows]

    def get_key(self, key_id: str) -> ApiKey | None:
        with self.sql.read() as conn:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else _key(row)

    def revoke_key(self, key_id: str, now: datetime) -> ApiKey | None:
        """Revoke a key (idempotent); None when there is no such key."""
        with self.sql.write() as conn:
            conn.execute("UPDATE api_keys SET revoked_us = ? WHERE key_id = ?"
                         " AND revoked_us IS NULL", (micros(now), key_id))
        return self.get_key(key_id)

    def authenticate(self, token: str, pepper: str) -> ApiKey | None:
        """The live key ``token`` is, or None (malformed, unknown, wrong secret, revoked)."""
        key_id = key_id_of(token)
        row = None
        if key_id is not None:
            with self.sql.read() as conn:
                row = conn.execute(
                    f"SELECT {_KEY_COLUMNS}, digest FROM api_keys WHERE key_id = ?",
                    (key_id,)).fetchone()
        if row is None:
            digest_matches(pepper, token, _DUMMY_DIGEST)  # same work as a real check
            return None
        if not digest_matches(pepper, token, row[7]) or row[6] is not None:
            return None
        return _key(row)

    @staticmethod
    def needs_touch(key: ApiKey, now: datetime) -> bool:
        """Whether ``last_used_at`` is older than a minute (``touch`` it then)."""
        last = key.last_used_at
        return last is None or micros(now) - micros(last) >= LAST_USED_EVERY_US

    def touch(self, key_id: str, now: datetime) -> None:
        """Record a use of the key (a write: callers do it off the event loop, once a
        minute per key, see ``needs_touch``)."""
        with self.sql.write() as conn:
            conn.execute("UPDATE api_keys SET last_used_us = ? WHERE key_id = ?",
                         (micros(now), key_id))


def _key(row: tuple[object, ...]) -> ApiKey:
    key_id, tenant, scopes, name, created, last_used, revoked = row[:7]
    assert isinstance(key_id, str) and isinstance(tenant, str) and isinstance(scopes, str)
    return ApiKey(
        key_id=key_id, prefix=KEY_PREFIX + key_id, tenant=tenant,
        scopes=[Scope(s) for s in json.loads(scopes)], name=str(name),
        created_at=from_micros(int(str(created))),
        last_used_at=from_micros(None if last_used is None else int(str(last_used))),
        revoked_at=from_micros(None if revoked is None else int(str(revoked))),
    )
