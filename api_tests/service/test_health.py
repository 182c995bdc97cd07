"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api_tests.core.factories import make_record
from api_tests.support.api import Api, ModelFiles, make_settings, running_api
from api_tests.support.problems import assert_problem
from core.jobs.record import JobStatus
from core.queue import heartbeat_key
from stack.processes import free_port

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_healthz(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}


def test_readyz_needs_a_worker_heartbeat(api: Api) -> None:
    body = assert_problem(api.client.get("/readyz"), 503, "not_ready")
    assert body["checks"]["redis"] == "ok" and body["checks"]["storage"] == "ok"
    assert body["checks"]["worker"].startswith("no worker heartbeat")
    key = heartbeat_key("test-worker@" + api.settings.queue_name)
    api.redis.set(key, "1", ex=30)
    try:
        response = api.client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"ready": True,
                                   "checks": {"redis": "ok", "storage": "ok", "database": "ok",
                                              "objects": "ok", "worker": "ok"}}
    finally:
        api.redis.delete(key)


def test_readyz_without_redis(tmp_path: Path) -> None:
    with running_api(make_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0")) as api:
        body = assert_problem(api.client.get("/readyz"), 503, "not_ready")
        assert body["checks"]["redis"].startswith("unreachable")
        assert body["checks"]["storage"] == "ok"
        metrics = api.client.get("/metrics").text
        assert "pruner_broker_up 0.0" in metrics
        assert "pruner_queue_depth" not in metrics.replace("# HELP", "").split("pruner_broker")[0]


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in metrics:\n{text}"
    return float(match.group(1))


def test_metrics(api: Api, model_files: ModelFiles) -> None:
    for i, seconds in enumerate([3.0, 40.0]):
        api.store.create(make_record(T0, job_id=f"s{i}", status=JobStatus.SUCCEEDED,
                                     started_at=T0, finished_at=T0 + timedelta(seconds=seconds)))
    response = api.submit(model_files.state_dict)
    assert response.status_code == 202
    text = api.client.get("/metrics").text
    queue = api.settings.queue_name
    assert _sample(text, 'pruner_jobs{status="queued"}') == 1
    assert _sample(text, 'pruner_jobs{status="succeeded"}') == 2
    assert _sample(text, 'pruner_jobs{status="failed"}') == 0
    assert _sample(text, f'pruner_queue_depth{{queue="{queue}"}}') == 1
    assert _sample(text, "pruner_broker_up") == 1
    assert _sample(text, "pruner_upload_bytes_total") == model_files.state_dict.stat().st_size
    hist = 'pruner_job_duration_seconds_bucket{le="%s",status="succeeded"}'
    assert _sample(text, hist % "1.0") == 0
    assert _sample(text, hist % "5.0") == 1
    assert _sample(text, hist % "60.0") == 2
    assert _sample(text, hist % "+Inf") == 2
    assert _sample(text, 'pruner_job_duration_seconds_sum{status="succeeded"}') == 43.0
