"""/v1/admin: tenants, their limits and webhook defaults, and API keys (an ``admin`` key).

Admin is deployment-wide: an admin key manages every tenant, while its own job routes still
see only its own tenant's jobs. ``python -m service.keys`` does the same from a shell.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from core.jobs.lifecycle import utcnow
from core.tenants.accounts import (
    TENANT_NAME,
    ApiKey,
    CreatedKey,
    EffectiveLimits,
    Notify,
    Scope,
    Tenant,
    TenantLimits,
)
from core.tenants.store import TenantExists, UnknownTenant
from core.tenants.tenancy import auth_pepper, effective_limits
from service.auth import AdminDep
from service.deps import AccountsDep, SettingsDep
from service.errors import AUTH_ERRORS, Conflict, NotFound, ValidationFailed, problem_responses
from service.submit import check_notify_url

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class TenantCreate(BaseModel):
    name: str = Field(pattern=TENANT_NAME)
    limits: TenantLimits = TenantLimits()
    notify: Notify | None = None


class TenantUpdate(BaseModel):
    limits: TenantLimits | None = None
    notify: Notify | None = None
    clear_notify: bool = False


class TenantPublic(BaseModel):
    name: str
    limits: TenantLimits = Field(description="As set (null: the deployment default).")
    effective_limits: EffectiveLimits
    notify: Notify | None


class TenantCreated(TenantPublic):
    signing_secret: str = Field(description="whsec_...: verifies its webhooks. Shown on "
                                "creation and rotation only.")


class TenantsPublic(BaseModel):
    data: list[TenantPublic]


class KeyCreate(BaseModel):
    tenant: str = Field(pattern=TENANT_NAME)
    scopes: list[Scope] = Field(min_length=1)
    name: str = Field(default="", max_length=200)


class KeysPublic(BaseModel):
    data: list[ApiKey]


def _public(tenant: Tenant, settings: SettingsDep) -> TenantPublic:
    return TenantPublic(name=tenant.name, limits=tenant.limits, notify=tenant.notify,
                        effective_limits=effective_limits(settings, tenant.limits))


def _created(tenant: Tenant, settings: SettingsDep) -> TenantCreated:
    return TenantCreated(**_public(tenant, settings).model_dump(),
                         signing_secret=tenant.signing_secret)


@router.post("/tenants", status_code=201, response_model=TenantCreated,
             responses=problem_responses(Conflict, ValidationFailed, *AUTH_ERRORS))
def create_tenant(body: TenantCreate, who: AdminDep, accounts: AccountsDep,
                  settings: SettingsDep) -> TenantCreated:
    """Create a tenant; the answer holds its webhook signing secret."""
    if body.notify is not None:
        check_notify_url(body.notify, settings, "tenant")
    try:
        tenant = accounts.create_tenant(body.name, utcnow(), body.limits, body.notify)
    except TenantExists as exc:
        raise Conflict(f"tenant {body.name!r} exists") from exc
    return _created(tenant, settings)


@router.get("/tenants", response_model=TenantsPublic, responses=problem_responses(*AUTH_ERRORS))
def list_tenants(who: AdminDep, accounts: AccountsDep, settings: SettingsDep) -> TenantsPublic:
    """Every tenant with its limits."""
    return TenantsPublic(data=[_public(t, settings) for t in accounts.list_tenants()])


@router.get("/tenants/{name}", response_model=TenantPublic,
            responses=problem_responses(NotFound, *AUTH_ERRORS))
def get_tenant(name: str, who: AdminDep, accounts: AccountsDep,
               settings: SettingsDep) -> TenantPublic:
    """One tenant with its limits."""
    tenant = accounts.get_tenant(name)
    if tenant is None:
        raise NotFound(f"no tenant {name!r}")
    return _public(tenant, settings)


@router.patch("/tenants/{name}", response_model=TenantPublic,
              responses=problem_responses(NotFound, ValidationFailed, *AUTH_ERRORS))
def update_tenant(name: str, body: TenantUpdate, who: AdminDep, accounts: AccountsDep,
                  settings: SettingsDep) -> TenantPublic:
    """Set some of a tenant's limits (the others stay) or its default webhook."""
    if body.notify is not None:
        check_notify_url(body.notify, settings, "tenant")
    try:
        tenant = accounts.update_tenant(name, limits=body.limits, notify=body.notify,
                                        clear_notify=body.clear_notify)
    except UnknownTenant as exc:
        raise NotFound(f"no tenant {name!r}") from exc
    return _public(tenant, settings)


@router.post("/tenants/{name}/signing-secret", response_model=TenantCreated,
             responses=problem_responses(NotFound, *AUTH_ERRORS))
def rotate_signing_secret(name: str, who: AdminDep, accounts: AccountsDep,
                          settings: SettingsDep) -> TenantCreated:
    """A new webhook signing secret for the tenant (the old one stops signing at once)."""
    try:
        return _created(accounts.rotate_signing_secret(name), settings)
    except UnknownTenant as exc:
        raise NotFound(f"no tenant {name!r}") from exc


@router.post("/keys", status_code=201, response_model=CreatedKey,
             responses=problem_responses(NotFound, ValidationFailed, *AUTH_ERRORS))
def create_key(body: KeyCreate, who: AdminDep, accounts: AccountsDep,
               settings: SettingsDep) -> CreatedKey:
    """A new key for a tenant: ``key`` is shown in this answer only, never again."""
    try:
        return accounts.create_key(body.tenant, body.scopes, auth_pepper(settings), utcnow(),
                                   name=body.name)
    except UnknownTenant as exc:
        raise NotFound(f"no tenant {body.tenant!r}; create it first") from exc


@router.get("/keys", response_model=KeysPublic, responses=problem_responses(*AUTH_ERRORS))
def list_keys(who: AdminDep, accounts: AccountsDep,
              tenant: Annotated[str | None, Query()] = None) -> KeysPublic:
    """Keys (prefix, tenant, scopes, created, last used, revoked), never their secrets."""
    return KeysPublic(data=accounts.list_keys(tenant))


@router.delete("/keys/{key_id}", response_model=ApiKey,
               responses=problem_responses(NotFound, *AUTH_ERRORS))
def revoke_key(key_id: str, who: AdminDep, accounts: AccountsDep) -> ApiKey:
    """Revoke a key: refused from the next request on, on every API process."""
    key = accounts.revoke_key(key_id, utcnow())
    if key is None:
        raise NotFound(f"no key {key_id!r}")
    return key
