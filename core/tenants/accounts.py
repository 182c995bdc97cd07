"""Tenants and API keys: what they are, how a key is made, shown once and checked.

A key is ``prn_live_<key id>_<secret>``: the key id (12 hex digits) is the visible prefix that
listings show and that finds the key's row; the secret (32 random bytes, base64url) never
leaves the response that created it. The store keeps only ``HMAC-SHA256(pepper, key)``: the
pepper is a per-deployment secret from the settings (``PRUNER_AUTH_PEPPER``, else a file the
embedded stack creates under ``data_dir``), so a stolen database alone cannot be used to test
guesses. Checking compares digests with ``hmac.compare_digest`` (constant time).

Plain pydantic and stdlib; the rows live in ``core/tenants/store.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

KEY_PREFIX = "prn_live_"
_KEY = re.compile(r"^prn_live_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
TENANT_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TENANT = re.compile(TENANT_NAME)
Event = Literal["succeeded", "failed", "cancelled"]
LOCAL_TENANT = "local"  # the embedded stack's tenant, and every request's when auth is off


class Scope(StrEnum):
    JOBS_READ = "jobs:read"  # read jobs, reports, models, events, deliveries; architectures
    JOBS_WRITE = "jobs:write"  # submit and cancel jobs
    ADMIN = "admin"  # tenants, keys, limits, /metrics; implies the other two


ALL_SCOPES = frozenset(Scope)


def grants(scopes: frozenset[Scope], needed: Scope) -> bool:
    return needed in scopes or Scope.ADMIN in scopes


class TenantLimits(BaseModel):
    """Per-tenant limits; ``None`` takes the deployment default from the settings."""

    max_queued: int | None = Field(default=None, ge=0, description="Queued jobs at once.")
    max_running: int | None = Field(default=None, ge=1, description="Running jobs at once; "
                                    "further jobs wait in the queue.")
    max_stored_bytes: int | None = Field(default=None, ge=0, description="Bytes of uploads and "
                                         "results kept for the tenant's unexpired jobs.")
    submissions_per_minute: int | None = Field(default=None, ge=0,
                                               description="Submissions in any 60 s.")


class EffectiveLimits(BaseModel):
    """Limits with every default filled in (0 running means no limit)."""

    max_queued: int
    max_running: int
    max_stored_bytes: int
    submissions_per_minute: int


class Notify(BaseModel):
    """Where and when to deliver a signed webhook about a job."""

    model_config = {"extra": "forbid"}

    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://",
                     description="https:// (http:// only to hosts on the admin allow-list).")
    events: list[Event] = Field(default=["succeeded", "failed", "cancelled"], min_length=1,
                                description="Terminal statuses to deliver.")


class Tenant(BaseModel):
    name: str = Field(pattern=TENANT_NAME)
    created_at: datetime
    limits: TenantLimits = TenantLimits()
    notify: Notify | None = Field(default=None, description="Default webhook for its jobs.")
    signing_secret: str = Field(repr=False, description="whsec_...: signs its webhooks.")


class ApiKey(BaseModel):
    """A key as listed: never the secret."""

    key_id: str
    prefix: str = Field(description="The visible start of the key: prn_live_<key id>.")
    tenant: str
    scopes: list[Scope]
    name: str = ""
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class CreatedKey(BaseModel):
    """The answer to creating a key: the only time ``key`` is shown."""

    key: str = Field(repr=False)
    info: ApiKey


def valid_tenant(name: str) -> bool:
    return bool(_TENANT.fullmatch(name))


def new_key() -> tuple[str, str]:
    """A fresh key and its id."""
    key_id = secrets.token_hex(6)
    return f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}", key_id


def key_id_of(token: str) -> str | None:
    """The key id of a well-formed key, else None."""
    match = _KEY.fullmatch(token)
    return match.group(1) if match else None


def key_digest(pepper: str, token: str) -> str:
    return hmac.new(pepper.encode(), token.encode(), hashlib.sha256).hexdigest()


def digest_matches(pepper: str, token: str, stored: str) -> bool:
    return hmac.compare_digest(key_digest(pepper, token), stored)


def parse_scopes(text: str) -> frozenset[Scope]:
    """``jobs:write,jobs:read`` -> scopes; ``ValueError`` naming an unknown one."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - {s.value for s in Scope})
    if unknown or not names:
        raise ValueError(f"unknown scopes {unknown}; use {', '.join(s.value for s in Scope)}"
                         if unknown else "at least one scope is needed")
    return frozenset(Scope(n) for n in names)
