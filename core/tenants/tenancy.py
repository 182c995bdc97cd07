"""Tenancy glue the API, the workers and the commands share: the pepper, a tenant's
effective limits, the store handles, and the embedded stack's local admin key.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from core.settings import Settings
from core.storage.protocols import JobStore
from core.tenants.accounts import ALL_SCOPES, LOCAL_TENANT, EffectiveLimits, TenantLimits
from core.tenants.quotas import Quota, RunningLimits
from core.tenants.store import AccountStore
from core.webhooks.deliveries import DeliveryStore

PEPPER_FILE = "auth_pepper"
ADMIN_KEY_FILE = "admin.key"


def _private_file(path: Path, content: str) -> None:
    """Create ``path`` with mode 0600 holding ``content``; keep what another process wrote
    first (O_EXCL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(content)


def auth_pepper(settings: Settings) -> str:
    """The deployment's pepper: the setting, else a random one kept in the data dir."""
    if settings.auth_pepper:
        return settings.auth_pepper
    path = settings.data_dir / PEPPER_FILE
    _private_file(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def effective_limits(settings: Settings, limits: TenantLimits | None) -> EffectiveLimits:
    own = limits or TenantLimits()
    return EffectiveLimits(
        max_queued=settings.tenant_max_queued if own.max_queued is None else own.max_queued,
        max_running=settings.tenant_max_running if own.max_running is None else own.max_running,
        max_stored_bytes=(settings.tenant_max_stored_bytes if own.max_stored_bytes is None
                          else own.max_stored_bytes),
        submissions_per_minute=(settings.tenant_submissions_per_minute
                                if own.submissions_per_minute is None
                                else own.submissions_per_minute),
    )


def quota(limits: EffectiveLimits) -> Quota:
    return Quota(max_queued=limits.max_queued, max_stored_bytes=limits.max_stored_bytes,
                 submissions_per_minute=limits.submissions_per_minute)


def accounts(store: JobStore) -> AccountStore:
    return AccountStore(store.sql())


def deliveries(store: JobStore) -> DeliveryStore:
    return DeliveryStore(store.sql())


def ensure_local_admin(settings: Settings, store: JobStore) -> tuple[str, bool]:
    """The embedded stack's admin key for the ``local`` tenant, kept in
    ``data_dir/admin.key`` (mode 0600); made on first start. Returns it and whether it is
    new."""
    from core.jobs.lifecycle import utcnow

    path = settings.data_dir / ADMIN_KEY_FILE
    account_store = accounts(store)
    if path.exists():
        key = path.read_text().strip()
        if account_store.authenticate(key, auth_pepper(settings)) is not None:
            return key, False
        path.unlink()  # revoked, or made with another pepper: make a new one
    account_store.create_tenant(LOCAL_TENANT, utcnow(), exist_ok=True)
    created = account_store.create_key(LOCAL_TENANT, ALL_SCOPES, auth_pepper(settings),
                                       utcnow(), name="local admin (python -m stack)")
    _private_file(path, created.key + "\n")
    return path.read_text().strip(), True


def running_limits(settings: Settings, store: JobStore) -> RunningLimits:
    """The running-jobs limits of the tenants fair scheduling weighs (0: none): one read of
    just those tenants' rows per scheduling decision."""

    def limits(tenants: Sequence[str]) -> dict[str, int]:
        own = accounts(store).limits_of(tenants)
        return {t: effective_limits(settings, own.get(t)).max_running for t in tenants}

    return limits


def local_admin_key(settings: Settings) -> tuple[str, bool]:
    """``ensure_local_admin`` on a store of its own (``python -m stack``, test stacks)."""
    from core.storage.backends import open_job_store

    store = open_job_store(settings)
    try:
        return ensure_local_admin(settings, store)
    finally:
        store.close()
