"""Redis going away and coming back, as the API sees it: 503 + Retry-After, never 500, and
no half-accepted job left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError

from api_tests.service.factories import MODEL_BYTES, REPORT_BODY, finished_job
from api_tests.support.api import ModelFiles, make_settings, running_api
from api_tests.support.problems import assert_problem
from stack import processes as P


class OwnRedis:
    """A redis-server this test alone uses, stopped and started again on the same port and
    append-only file."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, P.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.proc = P.start_redis(self.port, self.root / "redis", self.root / "logs")
        P.wait_until_ready(self.proc)

    def stop(self) -> None:
        P.stop(self.proc)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    try:
        yield redis
    finally:
        redis.stop()


def test_redis_stopped_then_restarted(
    tmp_path: Path, own_redis: OwnRedis, model_files: ModelFiles
) -> None:
    with running_api(make_settings(tmp_path, own_redis.url)) as api:
        first = api.submit(model_files.state_dict)
        assert first.status_code == 202
        job_id = first.json()["id"]

        own_redis.stop()
        refused = api.submit(model_files.state_dict)
        assert_problem(refused, 503, "broker_unavailable")
        assert refused.headers["retry-after"] == "5"
        # Records and files it holds are still served; readiness says why not ready.
        assert api.client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        assert job_id in [j["id"] for j in api.client.get("/v1/jobs").json()["data"]]
        done = finished_job(api)
        assert api.client.get(f"/v1/jobs/{done}/report").json() == REPORT_BODY
        assert api.client.get(f"/v1/jobs/{done}/model").content == MODEL_BYTES
        body = assert_problem(api.client.get("/readyz"), 503, "not_ready")
        assert body["checks"]["redis"].startswith("unreachable")
        assert len(api.store.list()[0]) == 2  # the first job and the finished one

        own_redis.start()
        second = api.submit(model_files.state_dict)
        assert second.status_code == 202, second.text
        # The append-only file kept the first task across the restart.
        assert api.queued_job_ids() == [job_id, second.json()["id"]]


def test_enqueue_failure_removes_the_job(
    tmp_path: Path, redis_url: str, model_files: ModelFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis answered the depth check but dropped before the task was sent."""

    def refuse(*args: object) -> None:
        raise OperationalError("Connection refused")

    monkeypatch.setattr("service.submit.enqueue_job", refuse)
    with running_api(make_settings(tmp_path, redis_url)) as api:
        response = api.submit(model_files.state_dict, headers={"Idempotency-Key": "k"})
        assert_problem(response, 503, "broker_unavailable")
        assert api.store.list()[0] == []
        assert list(api.blobs.root.iterdir()) == []
        monkeypatch.undo()
        # The key is free again: the retry the 503 asked for is accepted.
        retry = api.submit(model_files.state_dict, headers={"Idempotency-Key": "k"})
        assert retry.status_code == 202
        assert api.queued_job_ids() == [retry.json()["id"]]


def test_first_submission_after_a_quiet_redis_restart_is_accepted(
    tmp_path: Path, own_redis: OwnRedis, model_files: ModelFiles
) -> None:
    """Pooled connections go stale when Redis restarts while the API is idle; the next
    request must reconnect, not answer a false 503."""
    with running_api(make_settings(tmp_path, own_redis.url)) as api:
        first = api.submit(model_files.state_dict)
        assert first.status_code == 202
        own_redis.stop()
        own_redis.start()
        second = api.submit(model_files.state_dict)
        assert second.status_code == 202, second.text
        assert api.queued_job_ids() == [first.json()["id"], second.json()["id"]]
