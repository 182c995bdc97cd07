"""Per-tenant quotas at the API, each hit exactly at its boundary by real submissions.

Limits come from the settings (``tenant_*``) unless the tenant has its own, set with
``PATCH /v1/admin/tenants/{name}``. A refusal is 429 with the quota's code, ``Retry-After``,
``limit`` and ``current``, and leaves nothing behind (no record, no files, no task); one
tenant at its limit never holds another back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from api_tests.service.factories import NOW
from api_tests.support.api import Api, ModelFiles, make_settings, running_api
from api_tests.support.problems import assert_problem
from api_tests.support.tenants import Tenant, add_tenant, set_limits, stored, submit_as
from core.jobs.record import JobStatus
from core.tenants.accounts import Scope

RW = (Scope.JOBS_READ, Scope.JOBS_WRITE)

def send(api: Api, tenant: Tenant, model: Path) -> httpx.Response:
    return submit_as(api, model, tenant.headers(*RW))


def accepted(api: Api, tenant: Tenant, model: Path, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = send(api, tenant, model)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def refused(response: httpx.Response, code: str, limit: int, current: int) -> dict[str, Any]:
    body = assert_problem(response, 429, code)
    assert (body["limit"], body["current"]) == (limit, current), body
    assert int(response.headers["retry-after"]) >= 1
    return body


def nothing_left_behind(api: Api, accepted_ids: list[str]) -> None:
    """The refused submissions left no record, no job folder and no task."""
    records, _ = api.store.list(limit=200)
    on_disk = {p.name for p in (api.settings.data_dir / "jobs").iterdir()
               if not p.name.startswith(".")}
    assert {r.id for r in records} == set(accepted_ids)
    assert set(api.queued_job_ids()) == set(accepted_ids)
    assert on_disk == set(accepted_ids), on_disk


# --- queued jobs ---------------------------------------------------------------------------


def test_max_queued_set_by_the_admin_is_exact(api: Api, model_files: ModelFiles) -> None:
    model = model_files.state_dict
    acme, globex = add_tenant(api, "acme", RW), add_tenant(api, "globex", RW)
    body = set_limits(api, "acme", max_queued=3)
    assert body["limits"]["max_queued"] == 3 and body["effective_limits"]["max_queued"] == 3
    ids = accepted(api, acme, model, 3)  # the 3rd: exactly at the limit
    problem = refused(send(api, acme, model), "quota_queued", 3, 3)
    assert "acme" in problem["detail"]
    theirs = accepted(api, globex, model, 1)  # acme at its limit holds nobody else back
    nothing_left_behind(api, ids + theirs)
    # A cancelled job is no longer queued: room for exactly one more.
    assert api.client.post(f"/v1/jobs/{ids[0]}/cancel",
                           headers=acme.headers(*RW)).status_code == 200
    accepted(api, acme, model, 1)
    refused(send(api, acme, model), "quota_queued", 3, 3)
    # Running jobs do not count as queued.
    api.store.transition(ids[1], {JobStatus.QUEUED}, JobStatus.RUNNING)
    accepted(api, acme, model, 1)
    refused(send(api, acme, model), "quota_queued", 3, 3)


def test_max_queued_default_comes_from_the_settings(tmp_path: Path, redis_url: str,
                                                    model_files: ModelFiles) -> None:
    model = model_files.state_dict
    with running_api(make_settings(tmp_path, redis_url, tenant_max_queued=2)) as api:
        acme = add_tenant(api, "acme", RW)
        shown = api.client.get("/v1/admin/tenants/acme").json()
        assert shown["limits"]["max_queued"] is None
        assert shown["effective_limits"]["max_queued"] == 2
        accepted(api, acme, model, 2)
        refused(send(api, acme, model), "quota_queued", 2, 2)
        set_limits(api, "acme", max_queued=3)  # the tenant's own limit wins
        accepted(api, acme, model, 1)
        refused(send(api, acme, model), "quota_queued", 3, 3)
        body = set_limits(api, "acme", max_queued=None)  # back to the default
        assert body["effective_limits"]["max_queued"] == 2
        refused(send(api, acme, model), "quota_queued", 2, 3)
        set_limits(api, "acme", max_queued=0)  # 0 queued: no submissions at all
        refused(send(api, acme, model), "quota_queued", 0, 3)


def test_patching_one_limit_keeps_the_others(api: Api) -> None:
    add_tenant(api, "acme", RW)
    set_limits(api, "acme", max_queued=4, submissions_per_minute=9)
    body = set_limits(api, "acme", max_stored_bytes=1000)
    assert body["limits"] == {"max_queued": 4, "max_running": None, "max_stored_bytes": 1000,
                              "submissions_per_minute": 9}
    assert body["effective_limits"]["max_running"] == api.settings.tenant_max_running
    bad = api.client.patch("/v1/admin/tenants/acme", json={"limits": {"max_queued": -1}})
    assert_problem(bad, 422, "validation_error")
    assert_problem(api.client.patch("/v1/admin/tenants/nobody", json={"limits": {}}), 404,
                   "not_found")


# --- submission rate ---------------------------------------------------------------------------


def test_submissions_per_minute_is_exact(api: Api, model_files: ModelFiles) -> None:
    model = model_files.state_dict
    acme, globex = add_tenant(api, "acme", RW), add_tenant(api, "globex", RW)
    set_limits(api, "acme", submissions_per_minute=2)
    ids = accepted(api, acme, model, 2)
    refused_response = send(api, acme, model)
    refused(refused_response, "quota_rate", 2, 2)
    assert 1 <= int(refused_response.headers["retry-after"]) <= 60
    # Cancelling frees no rate: the limit counts submissions, not queued jobs.
    for job_id in ids:
        assert api.client.post(f"/v1/jobs/{job_id}/cancel",
                               headers=acme.headers(*RW)).status_code == 200
    refused(send(api, acme, model), "quota_rate", 2, 2)
    theirs = accepted(api, globex, model, 3)
    nothing_left_behind(api, ids + theirs)


def test_submissions_older_than_a_minute_do_not_count(api: Api,
                                                      model_files: ModelFiles) -> None:
    """The window is the last 60 s: a submission made earlier frees its place."""
    model = model_files.state_dict
    acme = add_tenant(api, "acme", RW)
    set_limits(api, "acme", submissions_per_minute=1)
    (first,) = accepted(api, acme, model, 1)
    refused(send(api, acme, model), "quota_rate", 1, 1)
    created = stored(api, first).created_at
    with api.store.sql().write() as conn:  # as if it had been submitted 61 s ago
        conn.execute("UPDATE jobs SET created_us = created_us - 61000000 WHERE id = ?",
                     (first,))
    assert stored(api, first).created_at == created
    accepted(api, acme, model, 1)


def test_submissions_per_minute_default_comes_from_the_settings(
    tmp_path: Path, redis_url: str, model_files: ModelFiles,
) -> None:
    model = model_files.state_dict
    with running_api(make_settings(tmp_path, redis_url,
                                   tenant_submissions_per_minute=1)) as api:
        acme, globex = add_tenant(api, "acme", RW), add_tenant(api, "globex", RW)
        accepted(api, acme, model, 1)
        refused(send(api, acme, model), "quota_rate", 1, 1)
        accepted(api, globex, model, 1)
        refused(send(api, globex, model), "quota_rate", 1, 1)


# --- stored bytes ------------------------------------------------------------------------------


def test_max_stored_bytes_counts_upload_bytes_exactly(api: Api,
                                                      model_files: ModelFiles) -> None:
    model = model_files.state_dict
    size = model.stat().st_size
    acme, globex = add_tenant(api, "acme", RW), add_tenant(api, "globex", RW)
    set_limits(api, "acme", max_stored_bytes=2 * size)
    set_limits(api, "globex", max_stored_bytes=2 * size - 1)
    ids = accepted(api, acme, model, 2)  # the 2nd: exactly at the limit
    assert [stored(api, i).upload_bytes for i in ids] == [size, size]
    refused(send(api, acme, model), "quota_storage", 2 * size, 2 * size)
    (theirs,) = accepted(api, globex, model, 1)
    refused(send(api, globex, model), "quota_storage", 2 * size - 1, size)  # one byte over
    nothing_left_behind(api, [*ids, theirs])
    # Cancelled jobs keep their files until retention expires them; then the bytes are free.
    api.client.post(f"/v1/jobs/{ids[0]}/cancel", headers=acme.headers(*RW))
    refused(send(api, acme, model), "quota_storage", 2 * size, 2 * size)
    api.store.update(ids[0], files_expired_at=NOW)
    accepted(api, acme, model, 1)
    refused(send(api, acme, model), "quota_storage", 2 * size, 2 * size)


def test_stored_bytes_include_a_finished_jobs_results(api: Api,
                                                      model_files: ModelFiles) -> None:
    model = model_files.state_dict
    size = model.stat().st_size
    acme = add_tenant(api, "acme", RW)
    set_limits(api, "acme", max_stored_bytes=3 * size)
    (job_id,) = accepted(api, acme, model, 1)
    api.store.transition(job_id, {JobStatus.QUEUED}, JobStatus.SUCCEEDED, finished_at=NOW,
                         output_bytes=size)
    accepted(api, acme, model, 1)  # upload + results + this upload: exactly 3 x size
    refused(send(api, acme, model), "quota_storage", 3 * size, 3 * size)


def test_max_stored_bytes_default_comes_from_the_settings(
    tmp_path: Path, redis_url: str, model_files: ModelFiles,
) -> None:
    model = model_files.state_dict
    size = model.stat().st_size
    with running_api(make_settings(tmp_path, redis_url, tenant_max_stored_bytes=size)) as api:
        acme, globex = add_tenant(api, "acme", RW), add_tenant(api, "globex", RW)
        accepted(api, acme, model, 1)
        refused(send(api, acme, model), "quota_storage", size, size)
        accepted(api, globex, model, 1)
        assert api.client.get("/v1/admin/tenants/acme").json()["effective_limits"][
            "max_stored_bytes"] == size


def test_an_idempotent_replay_is_answered_at_the_limit(api: Api,
                                                       model_files: ModelFiles) -> None:
    """A retried submission is the same job, not a new one: no quota stands in its way."""
    model = model_files.state_dict
    acme = add_tenant(api, "acme", RW)
    set_limits(api, "acme", max_queued=1, submissions_per_minute=1)
    headers = {**acme.headers(*RW), "Idempotency-Key": "retry-me"}
    first = submit_as(api, model, headers)
    assert first.status_code == 202
    again = submit_as(api, model, headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    refused(send(api, acme, model), "quota_queued", 1, 1)
