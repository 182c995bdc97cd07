"""Tenants, keys and limits for tests that run the API in-process (``support.api``):
made straight in the account store, so no admin round trip is needed to set a test up."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api_tests.support.api import REFERENCE, Api
from core.jobs.lifecycle import utcnow
from core.jobs.record import JobRecord
from core.tenants import tenancy
from core.tenants.accounts import Scope


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Tenant:
    """A tenant made for a test, with one key per scope set asked for."""

    name: str
    keys: dict[str, str] = field(default_factory=dict)  # "jobs:read,jobs:write" -> key

    def key(self, *scopes: Scope) -> str:
        return self.keys[",".join(sorted(s.value for s in scopes))]

    def headers(self, *scopes: Scope) -> dict[str, str]:
        return bearer(self.key(*scopes))


def add_tenant(api: Api, name: str, *scope_sets: tuple[Scope, ...]) -> Tenant:
    """Create ``name`` and one key per scope set, straight in the account store."""
    accounts = tenancy.accounts(api.store)
    accounts.create_tenant(name, utcnow(), exist_ok=True)
    tenant = Tenant(name)
    pepper = tenancy.auth_pepper(api.settings)
    for scopes in scope_sets or ((Scope.JOBS_READ, Scope.JOBS_WRITE),):
        created = accounts.create_key(name, scopes, pepper, utcnow())
        tenant.keys[",".join(sorted(s.value for s in scopes))] = created.key
    return tenant


def submit_as(api: Api, model: Path, headers: dict[str, str], spec: Any = REFERENCE,
              ) -> httpx.Response:
    with model.open("rb") as f:
        return api.client.post("/v1/jobs", files={"model": (model.name, f)},
                               data={"spec": json.dumps(spec)}, headers=headers)


def stored(api: Api, job_id: str) -> JobRecord:
    record = api.store.get(job_id)
    assert record is not None, job_id
    return record


def set_limits(api: Api, tenant: str, **limits: int | None) -> dict[str, Any]:
    """PATCH the tenant's limits as the local admin; returns the tenant as answered."""
    response = api.client.patch(f"/v1/admin/tenants/{tenant}", json={"limits": limits})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
