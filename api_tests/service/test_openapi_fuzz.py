"""Property-based: requests generated from our own OpenAPI document, sent to a real uvicorn
(with a real redis-server), never get a 5xx, and every answer matches the document."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from core.queue import heartbeat_key
from stack import processes as P


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNER_")}
    env.update({"PRUNER_DATA_DIR": str(root / "data"), "PRUNER_REDIS_URL": redis_url,
                "PRUNER_QUEUE_NAME": "fuzz", "PRUNER_MAX_UPLOAD_BYTES": "100000"})
    api = P.start_api(env, "127.0.0.1", P.free_port(), root / "logs")
    heartbeat = redis.Redis.from_url(redis_url)
    key = heartbeat_key("fuzz-worker")  # so /readyz answers 200: 503s would be "server errors"
    heartbeat.set(key, "1", ex=600)
    try:
        P.wait_until_ready(api)
        yield api.meta["url"]
    finally:
        heartbeat.delete(key)
        P.stop(api)


# Not positive_data_acceptance: a schema-valid `model` is any bytes, and random bytes are
# rightly refused (415); the schema cannot say "a TorchScript archive".
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance,
          checks.response_headers_conformance]


def test_no_server_errors_and_answers_match_the_document(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        check_operation(operation)


def check_operation(operation: Any) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=12, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    run()
