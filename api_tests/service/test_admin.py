"""/v1/admin (tenants, limits, signing secrets, keys), ``python -m service.keys`` and the
per-tenant metrics.

A key is shown once, in the answer that made it; listings show its prefix, never the key or
its digest. Revoking a key refuses it from the next request on, also when a command revokes
it under a running API.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from api_tests.core.factories import make_record
from api_tests.service.factories import NOW
from api_tests.support.api import Api, ModelFiles, make_settings, running_api
from api_tests.support.problems import assert_problem
from api_tests.support.stacks import REPO_ROOT
from api_tests.support.tenants import add_tenant, bearer, submit_as
from core.jobs.record import JobStatus
from core.settings import Settings
from core.tenants.accounts import Scope, key_digest
from core.tenants.store import AccountStore
from core.tenants.tenancy import auth_pepper, ensure_local_admin

KEY = re.compile(r"^prn_live_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def secret_of(key: str) -> str:
    match = KEY.fullmatch(key)
    assert match, key
    return match.group(2)


# --- tenants -----------------------------------------------------------------------------------


def test_create_tenant_shows_its_signing_secret_once(api: Api) -> None:
    response = api.client.post("/v1/admin/tenants",
                               json={"name": "vision", "limits": {"max_queued": 5}})
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "vision" and body["notify"] is None
    assert body["signing_secret"].startswith("whsec_")
    assert body["limits"] == {"max_queued": 5, "max_running": None, "max_stored_bytes": None,
                              "submissions_per_minute": None}
    assert body["effective_limits"] == {
        "max_queued": 5, "max_running": api.settings.tenant_max_running,
        "max_stored_bytes": api.settings.tenant_max_stored_bytes,
        "submissions_per_minute": api.settings.tenant_submissions_per_minute}
    shown = api.client.get("/v1/admin/tenants/vision")
    assert shown.status_code == 200 and "signing_secret" not in shown.json()
    assert body["signing_secret"] not in shown.text
    listing = api.client.get("/v1/admin/tenants")
    assert [t["name"] for t in listing.json()["data"]] == ["local", "vision"]
    assert body["signing_secret"] not in listing.text


def test_duplicate_and_invalid_tenants(api: Api) -> None:
    assert api.client.post("/v1/admin/tenants", json={"name": "vision"}).status_code == 201
    body = assert_problem(api.client.post("/v1/admin/tenants", json={"name": "vision"}), 409,
                          "conflict")
    assert "vision" in body["detail"]
    for name in ("Vision", "-lead", "has space", "a/b", "x" * 64, ""):
        response = api.client.post("/v1/admin/tenants", json={"name": name})
        assert_problem(response, 422, "validation_error")
    assert_problem(api.client.get("/v1/admin/tenants/nobody"), 404, "not_found")
    assert_problem(api.client.post("/v1/admin/tenants/nobody/signing-secret"), 404,
                   "not_found")


def test_tenant_webhook_default_is_checked(api: Api) -> None:
    ok = api.client.post("/v1/admin/tenants", json={
        "name": "hooks", "notify": {"url": "https://hooks.example.com/pruner"}})
    assert ok.status_code == 201
    assert ok.json()["notify"] == {"url": "https://hooks.example.com/pruner",
                                   "events": ["succeeded", "failed", "cancelled"]}
    for url in ("http://hooks.example.com/x", "https://127.0.0.1/x", "https://u:p@ex.com/x"):
        response = api.client.post("/v1/admin/tenants",
                                   json={"name": "bad", "notify": {"url": url}})
        assert_problem(response, 422, "validation_error")
    cleared = api.client.patch("/v1/admin/tenants/hooks", json={"clear_notify": True})
    assert cleared.status_code == 200 and cleared.json()["notify"] is None


def test_rotating_the_signing_secret(api: Api) -> None:
    first = api.client.post("/v1/admin/tenants", json={"name": "vision"}).json()
    rotated = api.client.post("/v1/admin/tenants/vision/signing-secret")
    assert rotated.status_code == 200
    assert rotated.json()["signing_secret"].startswith("whsec_")
    assert rotated.json()["signing_secret"] != first["signing_secret"]


# --- keys --------------------------------------------------------------------------------------


def test_a_key_is_shown_once_and_listings_never_hold_it(api: Api,
                                                        model_files: ModelFiles) -> None:
    api.client.post("/v1/admin/tenants", json={"name": "vision"})
    response = api.client.post("/v1/admin/keys", json={"tenant": "vision",
                                                       "scopes": ["jobs:read"], "name": "ci"})
    assert response.status_code == 201
    created = response.json()
    key, info = created["key"], created["info"]
    match = KEY.fullmatch(key)
    assert match and match.group(1) == info["key_id"]
    assert info["prefix"] == f"prn_live_{info['key_id']}" and key.startswith(info["prefix"])
    assert (info["tenant"], info["scopes"], info["name"]) == ("vision", ["jobs:read"], "ci")
    assert info["last_used_at"] is None and info["revoked_at"] is None
    # It works, within its scopes.
    assert api.client.get("/v1/jobs", headers=bearer(key)).status_code == 200
    assert_problem(submit_as(api, model_files.state_dict, bearer(key)), 403, "forbidden")
    assert_problem(api.client.get("/v1/admin/keys", headers=bearer(key)), 403, "forbidden")
    # Listings: the prefix, never the key, its secret or its digest.
    secret = secret_of(key)
    digest = key_digest(auth_pepper(api.settings), key)
    for url in ("/v1/admin/keys", "/v1/admin/keys?tenant=vision"):
        listing = api.client.get(url)
        assert listing.status_code == 200
        for hidden in (key, secret, digest):
            assert hidden not in listing.text
        assert "digest" not in listing.text
    mine = api.client.get("/v1/admin/keys?tenant=vision").json()["data"]
    assert [k["key_id"] for k in mine] == [info["key_id"]]
    assert mine[0]["last_used_at"] is not None  # it was used above
    assert set(mine[0]) == {"key_id", "prefix", "tenant", "scopes", "name", "created_at",
                            "last_used_at", "revoked_at"}
    everyone = api.client.get("/v1/admin/keys").json()["data"]
    assert {k["tenant"] for k in everyone} == {"local", "vision"}


def test_bad_key_requests(api: Api) -> None:
    api.client.post("/v1/admin/tenants", json={"name": "vision"})
    assert_problem(api.client.post("/v1/admin/keys", json={"tenant": "nobody",
                                                           "scopes": ["jobs:read"]}),
                   404, "not_found")
    for scopes in ([], ["jobs:delete"], ["JOBS:READ"]):
        response = api.client.post("/v1/admin/keys", json={"tenant": "vision", "scopes": scopes})
        assert_problem(response, 422, "validation_error")
    assert_problem(api.client.delete("/v1/admin/keys/0123456789ab"), 404, "not_found")


def test_revoking_a_key_refuses_its_next_request(api: Api) -> None:
    api.client.post("/v1/admin/tenants", json={"name": "vision"})
    created = api.client.post("/v1/admin/keys", json={
        "tenant": "vision", "scopes": ["jobs:read", "jobs:write"]}).json()
    key, key_id = created["key"], created["info"]["key_id"]
    assert api.client.get("/v1/jobs", headers=bearer(key)).status_code == 200
    revoked = api.client.delete(f"/v1/admin/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    response = api.client.get("/v1/jobs", headers=bearer(key))
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    again = api.client.delete(f"/v1/admin/keys/{key_id}")  # idempotent: the first time stays
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()[
        "revoked_at"]
    listed = api.client.get("/v1/admin/keys?tenant=vision").json()["data"]
    assert listed[0]["revoked_at"] == revoked.json()["revoked_at"]


def test_an_admin_of_any_tenant_administers_every_tenant(api: Api) -> None:
    acme = add_tenant(api, "acme", (Scope.ADMIN,))
    response = api.client.post("/v1/admin/tenants", json={"name": "other"},
                               headers=acme.headers(Scope.ADMIN))
    assert response.status_code == 201
    made = api.client.post("/v1/admin/keys", json={"tenant": "other", "scopes": ["jobs:read"]},
                           headers=acme.headers(Scope.ADMIN))
    assert made.status_code == 201 and made.json()["info"]["tenant"] == "other"


def test_the_api_records_a_keys_last_use_once_a_minute(api: Api,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    created = api.client.post("/v1/admin/keys", json={"tenant": "local",
                                                      "scopes": ["jobs:read"]}).json()
    key, key_id = created["key"], created["info"]["key_id"]
    touches: list[tuple[str, datetime]] = []
    real_touch = AccountStore.touch

    def touch(self: AccountStore, touched: str, now: datetime) -> None:
        touches.append((touched, now))
        real_touch(self, touched, now)

    clock = [NOW]
    monkeypatch.setattr(AccountStore, "touch", touch)
    monkeypatch.setattr("service.auth.utcnow", lambda: clock[0])
    for _ in range(20):
        assert api.client.get("/v1/jobs", headers=bearer(key)).status_code == 200
    clock[0] = NOW + timedelta(seconds=59.999)
    assert api.client.get("/v1/jobs", headers=bearer(key)).status_code == 200
    assert [t for t in touches if t[0] == key_id] == [(key_id, NOW)]
    clock[0] = NOW + timedelta(seconds=60)
    assert api.client.get("/v1/jobs", headers=bearer(key)).status_code == 200
    assert [t for t in touches if t[0] == key_id] == [(key_id, NOW),
                                                      (key_id, NOW + timedelta(seconds=60))]
    listed = {k["key_id"]: k for k in api.client.get("/v1/admin/keys").json()["data"]}
    assert listed[key_id]["last_used_at"] == (NOW + timedelta(seconds=60)).isoformat(
        ).replace("+00:00", "Z")


def test_keys_never_reach_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    created = api.client.post("/v1/admin/keys", json={"tenant": "local",
                                                      "scopes": ["jobs:read"]}).json()
    api.client.get("/v1/jobs", headers=bearer(created["key"]))
    api.client.get("/v1/jobs", headers=bearer(created["key"][:-1] + "x"))
    assert secret_of(created["key"])[:-1] not in caplog.text
    assert secret_of(api.key) not in caplog.text


def test_the_local_admin_key_is_kept_until_revoked(api: Api) -> None:
    assert ensure_local_admin(api.settings, api.store) == (api.key, False)
    path = api.settings.data_dir / "admin.key"
    assert path.stat().st_mode & 0o777 == 0o600
    revoked = api.client.delete(f"/v1/admin/keys/{api.key.split('_')[2]}")
    assert revoked.status_code == 200
    key, new = ensure_local_admin(api.settings, api.store)
    assert new and key != api.key and path.read_text().strip() == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert api.client.get("/metrics", headers=bearer(key)).status_code == 200
    assert_problem(api.client.get("/metrics"), 401, "unauthorized")  # the old one


# --- python -m service.keys --------------------------------------------------------------------


def keys_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.keys", *args], cwd=REPO_ROOT,
                          env=settings.as_env(), capture_output=True, text=True, timeout=60)


def test_the_keys_command_manages_tenants_and_keys(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url)
    made = keys_command(settings, "tenant-create", "vision", "--max-queued", "5")
    assert made.returncode == 0, made.stderr
    tenant = json.loads(made.stdout)
    assert tenant["tenant"] == "vision" and tenant["signing_secret"].startswith("whsec_")
    assert tenant["limits"]["max_queued"] == 5
    again = keys_command(settings, "tenant-create", "vision")
    assert again.returncode == 1 and "TenantExists" in again.stderr

    created = keys_command(settings, "create", "--tenant", "vision",
                           "--scopes", "jobs:read,jobs:write", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    match = KEY.fullmatch(key)
    assert match, created.stdout  # stdout is the key and nothing else
    key_id = match.group(1)
    assert key_id in created.stderr and key not in created.stderr
    assert keys_command(settings, "create", "--tenant", "nobody",
                        "--scopes", "jobs:read").returncode == 1
    assert keys_command(settings, "create", "--tenant", "vision",
                        "--scopes", "jobs:delete").returncode == 1

    limits = keys_command(settings, "tenant-limits", "vision", "--max-running", "2")
    assert limits.returncode == 0
    assert json.loads(limits.stdout) == {"max_queued": 5, "max_running": 2,
                                         "max_stored_bytes": None,
                                         "submissions_per_minute": None}

    with running_api(settings) as api:  # an API on the same data dir takes the key
        assert api.client.get("/v1/jobs", headers=bearer(key)).status_code == 200
        assert_problem(api.client.get("/v1/admin/keys", headers=bearer(key)), 403, "forbidden")
        shown = api.client.get("/v1/admin/tenants/vision").json()
        assert shown["limits"]["max_running"] == 2

        listing = keys_command(settings, "list", "--tenant", "vision")
        assert listing.returncode == 0
        (line,) = listing.stdout.splitlines()
        fields = line.split("\t")
        assert fields[:3] == [f"prn_live_{key_id}", "vision", "jobs:read,jobs:write"]
        assert fields[-2:] == ["live", "ci"]
        assert fields[4] != "-"  # last used: by the request above
        assert key not in listing.stdout and secret_of(key) not in listing.stdout
        tenants = keys_command(settings, "tenants").stdout.splitlines()
        assert [t.split("\t")[0] for t in tenants] == ["local", "vision"]

        revoked = keys_command(settings, "revoke", key_id)
        assert revoked.returncode == 0 and key_id in revoked.stdout
        assert_problem(api.client.get("/v1/jobs", headers=bearer(key)), 401, "unauthorized")
        assert keys_command(settings, "list").stdout.count("\trevoked\t") == 1
        assert keys_command(settings, "revoke", "0123456789ab").returncode == 1


# --- metrics -----------------------------------------------------------------------------------


def _tenant_samples(text: str) -> dict[tuple[str, str], float]:
    samples = {}
    for labels, value in re.findall(r"^pruner_tenant_jobs\{([^}]*)\} (\S+)$", text, re.M):
        named = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        assert set(named) == {"tenant", "status"}, labels
        samples[(named["tenant"], named["status"])] = float(value)
    return samples


def test_metrics_count_jobs_by_tenant(api: Api) -> None:
    for tenant, status, n in (("acme", JobStatus.QUEUED, 2), ("acme", JobStatus.RUNNING, 1),
                              ("globex", JobStatus.QUEUED, 1),
                              ("globex", JobStatus.SUCCEEDED, 4)):
        for _ in range(n):
            api.store.create(make_record(NOW, tenant=tenant, status=status))
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert _tenant_samples(response.text) == {("acme", "queued"): 2, ("acme", "running"): 1,
                                              ("globex", "queued"): 1}
    assert "# TYPE pruner_tenant_jobs gauge" in response.text


def test_metrics_tenant_labels_stay_bounded(tmp_path: Path, redis_url: str) -> None:
    with running_api(make_settings(tmp_path, redis_url)) as api:
        for i in range(70):
            api.store.create(make_record(NOW, tenant=f"t{i:02d}", status=JobStatus.QUEUED))
        samples = _tenant_samples(api.client.get("/metrics").text)
        tenants = {tenant for tenant, _ in samples}
        assert len(tenants) == 51 and "_other" in tenants
        assert sum(samples.values()) == 70
        assert samples[("_other", "queued")] == 20
