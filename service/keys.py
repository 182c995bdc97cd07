"""``python -m service.keys``: tenants and API keys from a shell, on the API's settings.

    python -m service.keys tenant-create vision [--max-queued N] [--max-running N]
        [--max-stored-bytes N] [--submissions-per-minute N]
    python -m service.keys tenant-limits vision --max-running 2
    python -m service.keys tenants
    python -m service.keys create --tenant vision --scopes jobs:write,jobs:read [--name ci]
    python -m service.keys list [--tenant vision]
    python -m service.keys revoke KEY_ID

``create`` prints the key once (it is stored only as a peppered digest); ``tenant-create``
prints the tenant's webhook signing secret. The same operations are the /v1/admin routes.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from core.jobs.lifecycle import utcnow
from core.settings import get_settings
from core.storage.backends import open_job_store
from core.tenants import tenancy
from core.tenants.accounts import TenantLimits, parse_scopes
from core.tenants.store import TenantExists, UnknownTenant


def _limits(args: argparse.Namespace) -> TenantLimits:
    given = {name: getattr(args, name) for name in
             ("max_queued", "max_running", "max_stored_bytes", "submissions_per_minute")
             if getattr(args, name) is not None}
    return TenantLimits(**given)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service.keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("tenant-create", "tenant-limits"):
        p = sub.add_parser(name)
        p.add_argument("tenant")
        for flag in ("--max-queued", "--max-running", "--max-stored-bytes",
                     "--submissions-per-minute"):
            p.add_argument(flag, type=int)
    sub.add_parser("tenants")
    create = sub.add_parser("create")
    create.add_argument("--tenant", required=True)
    create.add_argument("--scopes", required=True, help="e.g. jobs:write,jobs:read")
    create.add_argument("--name", default="")
    listing = sub.add_parser("list")
    listing.add_argument("--tenant")
    revoke = sub.add_parser("revoke")
    revoke.add_argument("key_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:  # e.g. a shared database without a shared pepper
        for error in exc.errors(include_url=False):
            print(f"error: settings: {error['msg']}", file=sys.stderr)
        return 2
    store = open_job_store(settings)
    accounts = tenancy.accounts(store)
    try:
        if args.command == "tenant-create":
            tenant = accounts.create_tenant(args.tenant, utcnow(), _limits(args))
            print(json.dumps({"tenant": tenant.name, "signing_secret": tenant.signing_secret,
                              "limits": tenant.limits.model_dump()}, indent=2))
        elif args.command == "tenant-limits":
            tenant = accounts.update_tenant(args.tenant, limits=_limits(args))
            print(tenant.limits.model_dump_json(indent=2))
        elif args.command == "tenants":
            for tenant in accounts.list_tenants():
                print(f"{tenant.name}\t{tenant.limits.model_dump_json()}")
        elif args.command == "create":
            created = accounts.create_key(args.tenant, parse_scopes(args.scopes),
                                          tenancy.auth_pepper(settings), utcnow(),
                                          name=args.name)
            print(created.key)
            print(f"(key id {created.info.key_id}, tenant {created.info.tenant}, scopes "
                  f"{','.join(created.info.scopes)}: shown once, keep it now)", file=sys.stderr)
        elif args.command == "list":
            for key in accounts.list_keys(args.tenant):
                print("\t".join([key.prefix, key.tenant, ",".join(key.scopes),
                                 key.created_at.isoformat(),
                                 key.last_used_at.isoformat() if key.last_used_at else "-",
                                 "revoked" if key.revoked_at else "live", key.name]))
        elif args.command == "revoke":
            if accounts.revoke_key(args.key_id, utcnow()) is None:
                print(f"no key {args.key_id!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
    except (TenantExists, UnknownTenant, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
