"""Who may call what: every authenticated route against every kind of caller.

The matrix: each route in ``ROUTES`` (the test checks that they are all the operations the
OpenAPI document marks as needing the bearer key) x {no key, malformed key, unknown key,
revoked key, wrong scope, another tenant's key, the tenant's own key}. No usable key: 401
``unauthorized`` with a ``WWW-Authenticate: Bearer`` challenge; a key without the route's
scope: 403 ``forbidden``; another tenant's job or dataset: 404 ``not_found``, byte for byte
the answer for one that does not exist; the tenant's own key: the route's normal answer.

Jobs are written straight into the store (``make_record``, with the report and model files
a worker leaves), so no worker is needed. Tenants and keys: ``api_tests.support.tenants``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes

from api_tests.core.datasets.factories import make_dataset, new_dataset_id
from api_tests.core.factories import make_record
from api_tests.report_html.factories import full_report
from api_tests.service.factories import MODEL_BYTES, NOW
from api_tests.support.api import REFERENCE, Api, ModelFiles, make_settings, running_api
from api_tests.support.problems import assert_problem
from api_tests.support.tenants import Tenant, add_tenant, bearer, stored, submit_as
from core.datasets.record import DATASET_FILE
from core.datasets.store import DatasetStore
from core.jobs.lifecycle import utcnow
from core.jobs.record import JobStatus, new_job_id
from core.queue import heartbeat_key
from core.settings import Settings
from core.storage.protocols import REPORT, model_file
from core.tenants import tenancy
from core.tenants.accounts import KEY_PREFIX, LOCAL_TENANT, Scope, TenantLimits, grants

# --- helpers ------------------------------------------------------------------------------------

UNKNOWN_KEY = f"{KEY_PREFIX}0123456789ab_{'A' * 43}"  # well-formed, never issued
MALFORMED_KEYS = ["not-a-key", "prn_live_short", f"{KEY_PREFIX}0123456789ab_{'A' * 42}",
                  f"prn_test_0123456789ab_{'A' * 43}", f"{KEY_PREFIX}0123456789AB_{'A' * 43}"]


DATASET_BYTES = safetensors_bytes({"images": np.zeros((4, 8, 8), np.uint8),
                                   "labels": np.array([0, 1, 0, 1], np.int64)})

def anonymous(api: Api) -> httpx.Client:
    """``api.client`` without its default (local admin) Authorization header."""
    api.client.headers.pop("Authorization", None)
    return api.client

def finished_job_of(api: Api, tenant: str) -> str:
    """A succeeded job of ``tenant`` (the newest of its jobs) with a full report and a
    TorchScript model, as a worker leaves it."""
    record = make_record(utcnow(), tenant=tenant, status=JobStatus.SUCCEEDED, started_at=NOW,
                         finished_at=NOW, model_format="torchscript",
                         model_sha256=hashlib.sha256(MODEL_BYTES).hexdigest())
    api.store.create(record)
    with api.blobs.writer(record.id, REPORT) as f:
        f.write(json.dumps(full_report()).encode())
    with api.blobs.writer(record.id, model_file("torchscript")) as f:
        f.write(MODEL_BYTES)
    return record.id

def dataset_of(api: Api, tenant: str) -> str:
    """A dataset of ``tenant``, its record and file as an upload leaves them."""
    record = make_dataset(tenant, n=0)
    record = record.model_copy(update={"created_at": utcnow()})
    DatasetStore(api.store.sql()).create(record)
    with api.blobs.writer(record.id, DATASET_FILE) as f:
        f.write(DATASET_BYTES)
    return record.id


def queued_job_of(api: Api, tenant: str) -> str:
    record = make_record(utcnow(), tenant=tenant)
    api.store.create(record)
    return record.id


# --- the world the matrix runs in ---------------------------------------------------------------

OWN, OTHER = "acme", "globex"
READ, WRITE, ADMIN = (Scope.JOBS_READ,), (Scope.JOBS_WRITE,), (Scope.ADMIN,)
READ_WRITE = (Scope.JOBS_READ, Scope.JOBS_WRITE)


@dataclass
class World:
    api: Api
    client: httpx.Client  # sends no key unless told
    own: Tenant
    other: Tenant
    revoked: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[World]:
    settings = make_settings(tmp_path_factory.mktemp("matrix"), redis_url)
    with running_api(settings) as api:
        own = add_tenant(api, OWN, READ, WRITE, ADMIN, READ_WRITE)
        other = add_tenant(api, OTHER, READ, WRITE, ADMIN)
        doomed = add_tenant(api, OWN, (Scope.ADMIN,)).key(Scope.ADMIN)
        accounts = tenancy.accounts(api.store)
        assert accounts.revoke_key(doomed.split("_")[2], utcnow()) is not None
        for name in (OWN, OTHER):  # every cell writes jobs "now": keep the rate quota out
            accounts.update_tenant(name, limits=TenantLimits(submissions_per_minute=10**6))
        yield World(api, anonymous(api), own, other, doomed)


@dataclass
class Jobs:
    """The own tenant's jobs one matrix cell's request may name (fresh for each cell)."""

    finished: str
    queued: str
    dataset: str


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # {finished} / {queued}: one of the tenant's jobs; {key_id}: a throwaway key
    scope: Scope
    ok: int  # the own tenant's answer
    body: Callable[[World], dict[str, Any]] | None = None  # JSON body, made per request
    upload: bool = False  # a model upload (POST /v1/jobs)
    dataset_upload: bool = False  # POST /v1/datasets
    check: Callable[[World, Jobs, httpx.Response], None] | None = None

    @property
    def names_a_job(self) -> bool:
        return "{finished}" in self.path or "{queued}" in self.path

    @property
    def names_a_dataset(self) -> bool:
        return "{dataset}" in self.path

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _fresh_tenant(_: World) -> dict[str, Any]:
    return {"name": f"t-{uuid.uuid4().hex[:10]}"}


def _key_for_own(_: World) -> dict[str, Any]:
    return {"tenant": OWN, "scopes": ["jobs:read"]}


def _limits(_: World) -> dict[str, Any]:
    return {"limits": {"max_queued": 500}}


def _listed_own(world: World, jobs: Jobs, response: httpx.Response) -> None:
    ids = [job["id"] for job in response.json()["data"]]
    assert ids[:2] == [jobs.queued, jobs.finished]  # the newest


def _is_job(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert response.json()["id"] == jobs.finished and response.json()["status"] == "succeeded"


def _is_report(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert response.json() == full_report()


def _is_html(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert response.headers["content-type"] == "text/html; charset=utf-8"


def _is_model(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert response.headers["content-type"] == "application/octet-stream"


def _is_stream(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/event-stream")
    assert f'"id":"{jobs.finished}"' in response.text


def _is_cancelled(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert response.json()["status"] == "cancelled"


def _is_metrics(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert "pruner_tenant_jobs" in response.text


def _is_created_job(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert stored(world.api, response.json()["id"]).status is JobStatus.QUEUED


def _is_revoked(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert response.json()["revoked_at"] is not None


def _is_new_key(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert response.json()["key"].startswith(response.json()["info"]["prefix"] + "_")


def _is_created_dataset(world: World, jobs: Jobs, response: httpx.Response) -> None:
    created = DatasetStore(world.api.store.sql()).get(response.json()["id"], OWN)
    assert created is not None


def _listed_own_dataset(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert response.json()["data"][0]["id"] == jobs.dataset  # the newest


def _is_dataset(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert response.json()["id"] == jobs.dataset


def _is_deleted(world: World, jobs: Jobs, response: httpx.Response) -> None:
    assert DatasetStore(world.api.store.sql()).get(jobs.dataset, OWN) is None


ROUTES = [
    Route("POST", "/v1/jobs", Scope.JOBS_WRITE, 202, upload=True, check=_is_created_job),
    Route("GET", "/v1/jobs", Scope.JOBS_READ, 200, check=_listed_own),
    Route("GET", "/v1/jobs/{finished}", Scope.JOBS_READ, 200, check=_is_job),
    Route("GET", "/v1/jobs/{finished}/report", Scope.JOBS_READ, 200, check=_is_report),
    Route("GET", "/v1/jobs/{finished}/report.html", Scope.JOBS_READ, 200, check=_is_html),
    Route("GET", "/v1/jobs/{finished}/model", Scope.JOBS_READ, 200, check=_is_model),
    Route("GET", "/v1/jobs/{finished}/events", Scope.JOBS_READ, 200, check=_is_stream),
    Route("GET", "/v1/jobs/{finished}/deliveries", Scope.JOBS_READ, 200),
    Route("POST", "/v1/jobs/{queued}/cancel", Scope.JOBS_WRITE, 200, check=_is_cancelled),
    Route("POST", "/v1/datasets", Scope.JOBS_WRITE, 201, dataset_upload=True,
          check=_is_created_dataset),
    Route("GET", "/v1/datasets", Scope.JOBS_READ, 200, check=_listed_own_dataset),
    Route("GET", "/v1/datasets/{dataset}", Scope.JOBS_READ, 200, check=_is_dataset),
    Route("DELETE", "/v1/datasets/{dataset}", Scope.JOBS_WRITE, 204, check=_is_deleted),
    Route("GET", "/v1/architectures", Scope.JOBS_READ, 200),
    Route("GET", "/v1/architectures/mnist_mlp", Scope.JOBS_READ, 200),
    Route("GET", "/metrics", Scope.ADMIN, 200, check=_is_metrics),
    Route("POST", "/v1/admin/tenants", Scope.ADMIN, 201, body=_fresh_tenant),
    Route("GET", "/v1/admin/tenants", Scope.ADMIN, 200),
    Route("GET", f"/v1/admin/tenants/{OWN}", Scope.ADMIN, 200),
    Route("PATCH", f"/v1/admin/tenants/{OWN}", Scope.ADMIN, 200, body=_limits),
    Route("POST", f"/v1/admin/tenants/{OWN}/signing-secret", Scope.ADMIN, 200),
    Route("POST", "/v1/admin/keys", Scope.ADMIN, 201, body=_key_for_own, check=_is_new_key),
    Route("GET", "/v1/admin/keys", Scope.ADMIN, 200),
    Route("DELETE", "/v1/admin/keys/{key_id}", Scope.ADMIN, 200, check=_is_revoked),
]
# A key with every scope but the one the route needs (admin implies the other two).
WRONG_SCOPE = {Scope.JOBS_READ: WRITE, Scope.JOBS_WRITE: READ, Scope.ADMIN: READ_WRITE}
CASES = ["no_key", "malformed", "unknown", "revoked", "wrong_scope", "other_tenant", "own"]


def _path(route: Route, jobs: Jobs, world: World) -> str:
    values = {"finished": jobs.finished, "queued": jobs.queued, "dataset": jobs.dataset,
              "key_id": ""}
    if "{key_id}" in route.path:  # a key made to be revoked by this request
        values["key_id"] = add_tenant(world.api, OWN, READ).key(Scope.JOBS_READ).split("_")[2]
    return route.path.format(**values)


def call(world: World, route: Route, path: str, headers: dict[str, str],
         model: Path) -> httpx.Response:
    if route.upload:
        return submit_as(world.api, model, headers)
    if route.dataset_upload:
        return world.client.post(path, files={"dataset": ("d.safetensors", DATASET_BYTES)},
                                 headers=headers)
    body = route.body(world) if route.body else None
    return world.client.request(route.method, path, json=body, headers=headers)


def _headers(world: World, route: Route, case: str) -> dict[str, str]:
    if case == "no_key":
        return {}
    if case == "malformed":
        return bearer(MALFORMED_KEYS[0])
    if case == "unknown":
        return bearer(UNKNOWN_KEY)
    if case == "revoked":
        return bearer(world.revoked)
    if case == "wrong_scope":
        return world.own.headers(*WRONG_SCOPE[route.scope])
    tenant = world.own if case == "own" else world.other
    return tenant.headers(route.scope)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_matrix(world: World, route: Route, case: str, model_files: ModelFiles) -> None:
    jobs = Jobs(finished_job_of(world.api, OWN), queued_job_of(world.api, OWN),
                dataset_of(world.api, OWN))
    path = _path(route, jobs, world)
    response = call(world, route, path, _headers(world, route, case), model_files.state_dict)
    if case in ("no_key", "malformed", "unknown", "revoked"):
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    elif case == "wrong_scope":
        body = assert_problem(response, 403, "forbidden")
        assert route.scope.value in body["detail"]
    elif case == "other_tenant" and (route.names_a_job or route.names_a_dataset):
        _assert_same_as_missing(world, route, jobs, response)
    else:
        assert response.status_code == route.ok, response.text
        if case == "own" and route.check is not None:
            route.check(world, jobs, response)
        if case == "other_tenant" and str(route) == "GET /v1/jobs":
            assert not {jobs.finished, jobs.queued} & {j["id"] for j in response.json()["data"]}
    if case != "own":  # nobody but the owner changed the tenant's queued job
        assert stored(world.api, jobs.queued).status is JobStatus.QUEUED


def _assert_same_as_missing(world: World, route: Route, jobs: Jobs,
                            response: httpx.Response) -> None:
    """Another tenant's job answers exactly what a job that does not exist answers."""
    body = assert_problem(response, 404, "not_found")
    if route.names_a_dataset:
        job_id, missing_id = jobs.dataset, new_dataset_id()
    else:
        job_id = jobs.finished if "{finished}" in route.path else jobs.queued
        missing_id = new_job_id()
    ids = {"finished": missing_id, "queued": missing_id, "dataset": missing_id}
    missing = call(world, route, route.path.format(**ids),
                   world.other.headers(route.scope), Path("/nonexistent"))
    assert missing.status_code == 404
    assert response.content.replace(job_id.encode(), missing_id.encode()) == missing.content
    assert ({k: v.replace(job_id, missing_id) for k, v in response.headers.items()}
            == dict(missing.headers.items()))
    assert body["instance"] == route.path.format(finished=job_id, queued=job_id,
                                                 dataset=job_id)


def test_the_matrix_covers_every_authenticated_operation(world: World) -> None:
    doc = world.client.get("/openapi.json").json()
    secured = {(method.upper(), path) for path, ops in doc["paths"].items()
               for method, op in ops.items() if op.get("security") == [{"bearer": []}]}
    ours = {(r.method, r.path.replace("{finished}", "{job_id}").replace("{queued}", "{job_id}")
             .replace("{dataset}", "{dataset_id}")
             .replace(f"/{OWN}", "/{name}").replace("/mnist_mlp", "/{name}"))
            for r in ROUTES}
    assert ours == secured


def test_openapi_declares_bearer_on_every_v1_operation_and_not_on_health(world: World) -> None:
    response = world.client.get("/openapi.json")
    assert response.status_code == 200  # the document itself is open
    doc = response.json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    v1 = [(path, m, op) for path, ops in doc["paths"].items() for m, op in ops.items()
          if path.startswith("/v1/")]
    assert len(v1) == 23
    for path, method, op in v1:
        assert op.get("security") == [{"bearer": []}], (method, path)
        assert {"401", "403"} <= set(op["responses"]), (method, path)
    assert doc["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}]
    for open_path in ("/healthz", "/readyz"):
        assert "security" not in doc["paths"][open_path]["get"]


@pytest.mark.parametrize("header", [
    *(f"Bearer {k}" for k in MALFORMED_KEYS), "Bearer", "Bearer ", "Basic dXNlcjpwYXNz",
    f"Token {UNKNOWN_KEY}", f"Bearer {UNKNOWN_KEY} extra", "bearer " + UNKNOWN_KEY,
])
def test_every_unusable_authorization_is_401_with_a_challenge(world: World,
                                                              header: str) -> None:
    response = world.client.get("/v1/jobs", headers={"Authorization": header})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_key_with_the_wrong_secret_is_401(world: World) -> None:
    key = world.own.key(Scope.JOBS_READ)
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert_problem(world.client.get("/v1/jobs", headers=bearer(wrong)), 401, "unauthorized")
    assert world.client.get("/v1/jobs", headers=bearer(key)).status_code == 200


def test_admin_implies_read_and_write(world: World, model_files: ModelFiles) -> None:
    admin = world.own.headers(Scope.ADMIN)
    job_id = finished_job_of(world.api, OWN)
    assert world.client.get(f"/v1/jobs/{job_id}", headers=admin).status_code == 200
    response = submit_as(world.api, model_files.state_dict, admin)
    assert response.status_code == 202
    assert stored(world.api, response.json()["id"]).tenant == OWN


def test_admin_of_one_tenant_still_reads_only_its_own_jobs(world: World) -> None:
    theirs = finished_job_of(world.api, OTHER)
    response = world.client.get(f"/v1/jobs/{theirs}", headers=world.own.headers(Scope.ADMIN))
    assert_problem(response, 404, "not_found")


def test_the_page_cookie_authenticates_the_event_stream(world: World) -> None:
    job_id = finished_job_of(world.api, OWN)
    try:
        world.client.cookies.set("pruner_key", world.own.key(Scope.JOBS_READ))
        own = world.client.get(f"/v1/jobs/{job_id}/events")
        assert own.status_code == 200 and f'"id":"{job_id}"' in own.text
        world.client.cookies.set("pruner_key", world.other.key(Scope.JOBS_READ))
        assert_problem(world.client.get(f"/v1/jobs/{job_id}/events"), 404, "not_found")
        world.client.cookies.set("pruner_key", world.revoked)
        assert_problem(world.client.get(f"/v1/jobs/{job_id}/events"), 401, "unauthorized")
    finally:
        world.client.cookies.clear()


# --- zero cross-tenant reads ----------------------------------------------------------------


def test_no_job_route_ever_answers_another_tenants_job(world: World) -> None:
    """Every job route, with each tenant's key on the other tenant's jobs (finished and
    queued), with every scope: 0 successes, and the jobs are unchanged."""
    jobs = {name: [finished_job_of(world.api, name), queued_job_of(world.api, name)]
            for name in (OWN, OTHER)}
    tenants = {OWN: world.own, OTHER: world.other}
    job_routes = [r for r in ROUTES if r.names_a_job]
    tries = successes = 0
    for reader, owner in ((OWN, OTHER), (OTHER, OWN)):
        for route in job_routes:
            for job_id in jobs[owner]:
                path = route.path.format(finished=job_id, queued=job_id)
                for scopes in (READ, WRITE, ADMIN):
                    response = world.client.request(route.method, path,
                                                    headers=tenants[reader].headers(*scopes))
                    tries += 1
                    successes += response.status_code < 400
                    # The route's scope decides: without it 403 before any lookup; with it
                    # 404, the answer for a job that does not exist.
                    if grants(frozenset(scopes), route.scope):
                        assert_problem(response, 404, "not_found")
                    else:
                        assert_problem(response, 403, "forbidden")
    assert tries == 2 * len(job_routes) * 2 * 3 and successes == 0
    for finished, queued in jobs.values():
        assert stored(world.api, queued).status is JobStatus.QUEUED
        assert stored(world.api, finished).status is JobStatus.SUCCEEDED


def test_listing_shows_only_own_jobs_on_every_page(api: Api) -> None:
    a = add_tenant(api, "a-corp", READ)
    b = add_tenant(api, "b-corp", READ)
    made: dict[str, list[str]] = {"a-corp": [], "b-corp": []}
    for i in range(9):  # interleaved in time, so every page of either spans the other's
        owner = "a-corp" if i % 3 else "b-corp"
        record = make_record(NOW + timedelta(seconds=i), tenant=owner,
                             status=JobStatus.SUCCEEDED if i % 2 else JobStatus.QUEUED)
        api.store.create(record)
        made[owner].append(record.id)
    for tenant in (a, b):
        seen, url = [], "/v1/jobs?limit=2"
        while url:
            page = api.client.get(url, headers=tenant.headers(Scope.JOBS_READ)).json()
            seen += [job["id"] for job in page["data"]]
            url = page["links"]["next"]
        assert seen == made[tenant.name][::-1]
        queued = api.client.get("/v1/jobs", params={"status": "queued"},
                                headers=tenant.headers(Scope.JOBS_READ)).json()
        assert {j["id"] for j in queued["data"]} <= set(made[tenant.name])
    # A cursor handed to one tenant pages through that tenant's jobs only, whoever sends it.
    first = api.client.get("/v1/jobs?limit=1", headers=a.headers(Scope.JOBS_READ)).json()
    rest = api.client.get(f"/v1/jobs?limit=50&cursor={first['next_cursor']}",
                          headers=b.headers(Scope.JOBS_READ)).json()
    assert {j["id"] for j in rest["data"]} <= set(made["b-corp"])
    # The local admin's listing is its own tenant's: empty.
    assert api.client.get("/v1/jobs").json()["data"] == []


def test_an_idempotency_key_never_replays_across_tenants(api: Api,
                                                         model_files: ModelFiles) -> None:
    a, b = add_tenant(api, "a-corp"), add_tenant(api, "b-corp")
    key = {"Idempotency-Key": "nightly-2026-03-01"}
    first = submit_as(api, model_files.state_dict, {**a.headers(*READ_WRITE), **key})
    assert first.status_code == 202
    replay = submit_as(api, model_files.state_dict, {**a.headers(*READ_WRITE), **key})
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    theirs = submit_as(api, model_files.state_dict, {**b.headers(*READ_WRITE), **key})
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    assert stored(api, theirs.json()["id"]).tenant == "b-corp"
    again = submit_as(api, model_files.state_dict, {**b.headers(*READ_WRITE), **key})
    assert again.status_code == 200 and again.json()["id"] == theirs.json()["id"]
    # A different body under b's key: b's own conflict, not a's job.
    other_spec = {**REFERENCE, "finetune": {"epochs": 1}}
    conflict = submit_as(api, model_files.state_dict, {**b.headers(*READ_WRITE), **key},
                         other_spec)
    assert_problem(conflict, 422, "idempotency_key_reused")
    assert api.queued_job_ids() == [first.json()["id"], theirs.json()["id"]]


# --- open routes and auth off -----------------------------------------------------------------


def test_health_and_readiness_need_no_key(api: Api) -> None:
    client = anonymous(api)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert_problem(client.get("/readyz"), 503, "not_ready")  # no worker: not 401
    key = heartbeat_key("test-worker@" + api.settings.queue_name)
    api.redis.set(key, "1", ex=30)
    try:
        assert client.get("/readyz").json()["ready"] is True
    finally:
        api.redis.delete(key)
    assert client.get("/openapi.json").status_code == 200


def test_auth_disabled_makes_every_request_the_local_tenant(
    tmp_path: Path, redis_url: str, model_files: ModelFiles,
) -> None:
    settings = make_settings(tmp_path, redis_url, auth="disabled")
    with running_api(settings) as api:
        client = anonymous(api)
        response = submit_as(api, model_files.state_dict, {})
        assert response.status_code == 202
        job_id = response.json()["id"]
        assert stored(api, job_id).tenant == LOCAL_TENANT
        assert [j["id"] for j in client.get("/v1/jobs").json()["data"]] == [job_id]
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/admin/tenants").status_code == 200
        # Any header, even a junk one, is ignored rather than refused.
        assert client.get("/v1/jobs", headers=bearer("junk")).status_code == 200
        theirs = finished_job_of(api, "acme")
        assert_problem(client.get(f"/v1/jobs/{theirs}"), 404, "not_found")


def test_pruner_auth_env_turns_auth_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNER_AUTH", "disabled")
    monkeypatch.setenv("PRUNER_DATA_DIR", str(tmp_path))
    assert Settings().auth == "disabled"
    monkeypatch.delenv("PRUNER_AUTH")
    assert Settings().auth == "enabled"
    monkeypatch.setenv("PRUNER_AUTH", "off")
    with pytest.raises(ValueError):
        Settings()
