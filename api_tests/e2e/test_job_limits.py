"""A pipeline bounds its own job: the spec's ``limits.timeout_s`` (the Python client drives)."""

from __future__ import annotations

from pathlib import Path

import pytest

from api_tests.e2e.stack_command import random_mlp
from client import JobFailed, PrunerClient
from stack.local import Stack

pytestmark = pytest.mark.e2e


def test_spec_timeout_fails_the_job_at_its_own_limit(stack: Stack, tmp_path: Path) -> None:
    model = random_mlp(tmp_path / "mlp.pt")
    spec = {"architecture": "mnist_mlp", "finetune": {"epochs": 20, "batch_size": 32},
            "limits": {"timeout_s": 3}}  # the server's limit is 240 s (support/stacks.py)
    with PrunerClient(stack.base_url, stack.api_key) as pruner:
        job = pruner.submit(model, spec)
        with pytest.raises(JobFailed) as raised:
            pruner.wait(job.id)
    failed = raised.value.job
    assert raised.value.code == "timeout" and failed.error is not None
    assert failed.error.message == (
        "the job ran past its wall-clock limit of 3 s (the spec's limits.timeout_s)")
    assert failed.attempts == 1  # a timeout is not retried
    assert failed.started_at is not None and failed.finished_at is not None
    assert (failed.finished_at - failed.started_at).total_seconds() >= 3
