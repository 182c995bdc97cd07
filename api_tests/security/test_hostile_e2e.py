"""The hostile-file suite end to end: real uvicorn, a real Celery worker and its sandboxed job
process, a real redis-server (fixtures in api_tests/conftest.py). Each file gets its exact
HTTP status (refused at the door) or job error code (refused in the worker); the canary stays
untouched; and the same worker then completes a good job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch import nn

from api_tests.conftest import Stack, TrainedMLP, start_stack, submit, wait_for
from api_tests.security import hostile as h

pytestmark = pytest.mark.e2e

MLP_SPEC: dict[str, Any] = {"architecture": "mnist_mlp", "finetune": {"epochs": 0}}
TS_SPEC: dict[str, Any] = {"finetune": {"epochs": 0}}


def problem(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    detail: str = body["detail"]
    return detail


def failed_job(client: httpx.Client, response: httpx.Response, code: str) -> str:
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "failed", job
    assert job["error"]["code"] == code, job["error"]
    assert job["attempts"] == 1  # refused once, not retried
    message: str = job["error"]["message"]
    return message


def good_job_succeeds(client: httpx.Client, trained_mlp: TrainedMLP) -> None:
    job = wait_for(client, submit(client, trained_mlp.state_dict, MLP_SPEC).json()["id"])
    assert job["status"] == "succeeded", job


def mlp_tensors() -> dict[str, torch.Tensor]:
    from worker.engine import registry

    torch.manual_seed(0)
    return dict(registry.build("mnist_mlp").state_dict())


def test_refused_at_the_door(stack: Stack, trained_mlp: TrainedMLP, tmp_path: Path) -> None:
    client = stack.client
    canary = h.make_canary(tmp_path)

    detail = problem(submit(client, h.shell_pickle_zip(tmp_path, canary), MLP_SPEC),
                     422, "invalid_upload")
    assert f"which loading would import and call: {os.name}.system." in detail
    detail = problem(submit(client, h.exec_pickle_zip(tmp_path, canary), MLP_SPEC),
                     422, "invalid_upload")
    assert ": builtins.exec." in detail
    problem(submit(client, h.raw_shell_pickle(tmp_path, canary), MLP_SPEC),
            415, "unsupported_media_type")

    whole = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(784, 10)), str(whole))
    detail = problem(submit(client, whole, MLP_SPEC), 422, "invalid_upload")
    assert "whole pickled model" in detail and "torch.nn.modules.linear.Linear" in detail

    hook = h.torchscript_setstate_hook(tmp_path, h.overwrite_canary_code(canary))
    assert "defines __setstate__" in problem(submit(client, hook, TS_SPEC), 422, "invalid_upload")

    detail = problem(submit(client, h.zip_bomb(tmp_path), MLP_SPEC), 413, "payload_too_large")
    assert "PRUNER_MAX_COMPRESSION_RATIO" in detail
    detail = problem(submit(client, h.many_entries(tmp_path, 10_000), MLP_SPEC),
                     413, "payload_too_large")
    assert "10001 entries" in detail
    detail = problem(submit(client, h.zip_with_entry(tmp_path, "archive/../../etc/x"), MLP_SPEC),
                     422, "invalid_upload")
    assert "climbs out with '..'" in detail

    good = h.state_dict_file(tmp_path, mlp_tensors())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    problem(submit(client, truncated, MLP_SPEC), 422, "invalid_upload")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(1, 256)) * 40)
    problem(submit(client, noise, MLP_SPEC), 415, "unsupported_media_type")

    lies = h.rewrite_zip(good, tmp_path / "lies.pt", {"/data/0": b"\x00" * 16})
    assert "holds 16" in problem(submit(client, lies, MLP_SPEC), 422, "invalid_upload")
    huge = h.state_dict_file(tmp_path, {"fc1.weight": torch.zeros(1).expand(10**5, 10**5)},
                             "huge.pt")
    assert "10000000000 elements" in problem(submit(client, huge, MLP_SPEC),
                                            413, "payload_too_large")
    cplx = h.state_dict_file(tmp_path, mlp_tensors() | {"fc3.bias": torch.zeros(10) * 1j},
                             "cplx.pt")
    assert "ComplexFloatStorage" in problem(submit(client, cplx, MLP_SPEC), 422, "invalid_upload")
    quant = h.state_dict_file(
        tmp_path,
        mlp_tensors() | {"fc3.bias": torch.quantize_per_tensor(torch.zeros(10), 0.1, 0,
                                                                torch.qint8)},
        "quant.pt",
    )
    assert "_rebuild_qtensor" in problem(submit(client, quant, MLP_SPEC), 422, "invalid_upload")

    assert canary.read_text() == h.CANARY_TEXT
    assert stack.worker.alive() and stack.api.alive()
    good_job_succeeds(client, trained_mlp)


def test_refused_in_the_worker(stack: Stack, trained_mlp: TrainedMLP, tmp_path: Path) -> None:
    client = stack.client
    canary = h.make_canary(tmp_path)

    for factory in (h.torchscript_reads_canary, h.torchscript_writes_canary):
        message = failed_job(client, submit(client, factory(tmp_path, canary), TS_SPEC),
                             "unsafe_model")
        assert "aten::from_file in " in message
        assert canary.read_text() == h.CANARY_TEXT

    nan = mlp_tensors()
    nan["fc1.weight"][0, 0] = float("nan")
    message = failed_job(client, submit(client, h.state_dict_file(tmp_path, nan, "nan.pt"),
                                        MLP_SPEC), "invalid_weights")
    assert message == "tensors with NaN or Inf values: fc1.weight (1 of 200704)"

    from worker.engine import registry

    lenet = h.state_dict_file(tmp_path, dict(registry.build("lenet5").state_dict()), "lenet.pt")
    message = failed_job(client, submit(client, lenet, MLP_SPEC), "architecture_mismatch")
    assert "unexpected keys: conv1.weight" in message

    wrong = h.save_script(h.WrongOutput(), tmp_path / "wrong.pt")
    message = failed_job(client, submit(client, wrong, TS_SPEC), "incompatible_model")
    assert "tensor of shape [2, 5]; expected a float tensor of shape [2, 10]" in message

    assert canary.read_text() == h.CANARY_TEXT
    good_job_succeeds(client, trained_mlp)


class Spins(nn.Module):
    """Burns CPU forever: only the job process's CPU-time limit stops it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        while bool(y.sum() > -1.0e30):
            y = y * 1.0
        return self.fc(y.flatten(1))


def test_limits_end_jobs_and_the_worker_goes_on(
    tmp_path: Path, trained_mlp: TrainedMLP
) -> None:
    """A stack of its own with tight limits: an over-limit upload answers 413, a job that
    spins past its CPU-time limit fails ``resource_limit`` without retries, and the worker
    then completes a good job."""
    with start_stack(tmp_path / "stack", max_upload_bytes=2 * 1024 * 1024,
                     job_cpu_time_limit_s=25) as limited:
        client = limited.client
        big = h.state_dict_file(tmp_path, {"w": torch.zeros(600_000)}, "big.pt")
        detail = problem(submit(client, big, MLP_SPEC), 413, "payload_too_large")
        assert "2097152" in detail

        spins = h.save_script(Spins(), tmp_path / "spins.pt")
        message = failed_job(client, submit(client, spins, TS_SPEC), "resource_limit")
        assert "SIGXCPU" in message
        good_job_succeeds(client, trained_mlp)
