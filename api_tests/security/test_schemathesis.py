"""Property-based fuzzing of the live API from its own OpenAPI document (schemathesis):
no request, valid or not, gets a 5xx, and every response matches what the document says
(status codes, content types, bodies). Valid and invalid requests (positive and negative
generation), bounded to a few examples per operation.

(schemathesis's lazy pytest fixture loader does not work with pytest 9, so the schema is
loaded from the live stack inside the test and each operation is driven through hypothesis.)
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks

from stack.local import Stack

pytestmark = pytest.mark.e2e

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 15
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def fuzz(operation: Any, mode: Any, base_url: str, calls: dict[str, int],
         headers: dict[str, str]) -> None:
    """Drive one operation with hypothesis; raises schemathesis's findings."""
    key = f"{operation.label} ({mode.value})"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        calls[key] = calls.get(key, 0) + 1
        case.call_and_validate(base_url=base_url, checks=CHECKS, headers=headers)

    check()


def fuzzer_key(stack: Stack) -> dict[str, str]:
    """A key of a tenant of its own with the job scopes: the fuzzer's random jobs and
    cancels stay away from the other tests' tenant, and the admin routes answer it 403 (as
    documented) instead of letting it rewrite the shared stack's tenants and keys."""
    stack.client.post("/v1/admin/tenants", json={"name": "fuzz"})
    created = stack.client.post("/v1/admin/keys", json={
        "tenant": "fuzz", "scopes": ["jobs:read", "jobs:write"], "name": "schemathesis"})
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['key']}"}


def test_api_conforms_to_its_openapi_document(stack: Stack) -> None:
    headers = fuzzer_key(stack)
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8  # jobs (5), architectures, health, readiness, metrics...
    failures: dict[str, str] = {}
    calls: dict[str, int] = {}
    for operation in operations:
        for mode in MODES:
            try:
                fuzz(operation, mode, stack.base_url, calls, headers)
            except Unsatisfiable:  # no invalid request exists for this operation (negative)
                continue
            except (Exception, BaseExceptionGroup) as exc:  # collect every finding, fail once
                failures[f"{operation.label} ({mode.value})"] = str(exc)[:2000]
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert {k.rsplit(" (", 1)[0] for k in calls} == {op.label for op in operations}
    print(f"schemathesis: {sum(calls.values())} requests: {calls}")
