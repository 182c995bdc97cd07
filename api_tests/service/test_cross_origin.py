"""Cookie-signed writes must come from the service's own pages: a POST, PATCH or DELETE that
authenticates with the ``pruner_key`` cookie and an ``Origin`` (or ``Referer``) of any other
origin, another port of the same host included, is refused with 403 ``cross_origin`` and
changes nothing; a bearer-token request is never checked; reads are not writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api_tests.core.factories import make_record
from api_tests.support.api import Api, make_settings, running_api
from api_tests.support.problems import assert_problem
from core.jobs.lifecycle import utcnow
from core.jobs.record import JobStatus

OWN = "http://testserver"  # TestClient's origin


@pytest.fixture()
def cookie_api(api: Api) -> Iterator[Api]:
    """The same app, signed in the way the pages are: the key as the cookie, no bearer."""
    bearer = api.client.headers.pop("authorization")
    api.client.cookies.set("pruner_key", bearer.removeprefix("Bearer "))
    yield api


def queued_job(api: Api) -> str:
    record = make_record(utcnow())
    api.store.create(record)
    return record.id


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "http://testserver:8080"},  # another port: the same "site" to a browser
    {"Origin": "https://testserver"},
    {"Origin": "null"},
    {"Referer": "http://evil.example/page"},
    {},  # neither: no browser page of ours sends a write without one
])
def test_a_cross_origin_cookie_write_is_refused(cookie_api: Api, headers: dict[str, str]) -> None:
    job_id = queued_job(cookie_api)
    response = cookie_api.client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert_problem(response, 403, "cross_origin")
    assert cookie_api.store.get(job_id).status == JobStatus.QUEUED  # type: ignore[union-attr]


@pytest.mark.parametrize("headers", [{"Origin": OWN}, {"Referer": f"{OWN}/jobs/x"}])
def test_a_same_origin_cookie_write_is_accepted(cookie_api: Api, headers: dict[str, str]) -> None:
    job_id = queued_job(cookie_api)
    response = cookie_api.client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    assert cookie_api.store.get(job_id).status == JobStatus.CANCELLED  # type: ignore[union-attr]


def test_patch_and_delete_are_checked_too(cookie_api: Api) -> None:
    evil = {"Origin": "http://evil.example"}
    assert_problem(cookie_api.client.patch("/v1/admin/tenants/local", json={}, headers=evil),
                   403, "cross_origin")
    assert_problem(cookie_api.client.delete("/v1/admin/keys/k", headers=evil), 403,
                   "cross_origin")


def test_a_cookie_read_from_anywhere_is_still_a_read(cookie_api: Api) -> None:
    response = cookie_api.client.get("/v1/jobs", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200


def test_bearer_requests_are_not_checked(api: Api) -> None:
    job_id = queued_job(api)
    response = api.client.post(f"/v1/jobs/{job_id}/cancel",
                               headers={"Origin": "http://evil.example"})
    assert response.status_code == 200, response.text


def test_no_other_page_can_sign_a_browser_in(api: Api) -> None:
    form = {"key": api.key, "next": "/"}
    api.client.headers.pop("authorization")
    refused = api.client.post("/signin", data=form, headers={"Origin": "http://evil.example"},
                              follow_redirects=False)
    assert_problem(refused, 403, "cross_origin")
    assert "pruner_key" not in refused.headers.get("set-cookie", "")
    accepted = api.client.post("/signin", data=form, headers={"Origin": OWN},
                               follow_redirects=False)
    assert accepted.status_code == 303
    assert accepted.headers["set-cookie"].startswith("pruner_key=")


def test_with_auth_disabled_a_write_naming_another_origin_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    """No cookie to send, but any page could still cancel through the browser; a script
    (no Origin, no Referer) is as before."""
    with running_api(make_settings(tmp_path, redis_url, auth="disabled")) as api:
        api.client.headers.pop("authorization")
        evil, mine = queued_job(api), queued_job(api)
        refused = api.client.post(f"/v1/jobs/{evil}/cancel",
                                  headers={"Origin": "http://127.0.0.1:9999"})
        assert_problem(refused, 403, "cross_origin")
        assert api.store.get(evil).status == JobStatus.QUEUED  # type: ignore[union-attr]
        assert api.client.post(f"/v1/jobs/{mine}/cancel").status_code == 200
