"""The hostile-file suite end to end: real uvicorn, a real Celery worker and its sandboxed job
process, a real redis-server (fixtures in api_tests/conftest.py). Each file gets its exact
HTTP status (refused at the door) or job error code (refused in the worker) in a test of its
own, so one failure hides none of the others; the canary stays untouched; and the same worker
then completes a good job."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch import nn

from api_tests.security import hostile as h
from api_tests.support.problems import assert_problem
from api_tests.support.stacks import TrainedMLP, start_stack, submit, wait_for
from stack.local import Stack

pytestmark = pytest.mark.e2e

MLP_SPEC: dict[str, Any] = {"architecture": "mnist_mlp", "finetune": {"epochs": 0}}
TS_SPEC: dict[str, Any] = {"finetune": {"epochs": 0}}

Make = Callable[[Path, Path], Path]  # (directory, canary) -> the file to upload


@dataclass(frozen=True)
class Case:
    make: Make
    spec: dict[str, Any]
    code: str  # the problem code (door) or the job error code (worker)
    says: tuple[str, ...] = ()  # fragments of the detail / error message
    status: int = 422  # the HTTP status, for a refusal at the door


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


# --- files the door refuses ---------------------------------------------------------------------


def whole_module(directory: Path, canary: Path) -> Path:
    path = directory / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(784, 10)), str(path))
    return path


def truncated(directory: Path, canary: Path) -> Path:
    path = directory / "truncated.pt"
    path.write_bytes(h.state_dict_file(directory, mlp_tensors()).read_bytes()[:5000])
    return path


def noise(directory: Path, canary: Path) -> Path:
    path = directory / "noise.bin"
    path.write_bytes(bytes(range(1, 256)) * 40)
    return path


def lying_storage(directory: Path, canary: Path) -> Path:
    good = h.state_dict_file(directory, mlp_tensors())
    return h.rewrite_zip(good, directory / "lies.pt", {"/data/0": b"\x00" * 16})


def huge_tensor(directory: Path, canary: Path) -> Path:
    return h.state_dict_file(directory, {"fc1.weight": torch.zeros(1).expand(10**5, 10**5)},
                             "huge.pt")


def complex_tensor(directory: Path, canary: Path) -> Path:
    return h.state_dict_file(directory, mlp_tensors() | {"fc3.bias": torch.zeros(10) * 1j},
                             "cplx.pt")


def quantized_tensor(directory: Path, canary: Path) -> Path:
    quantized = torch.quantize_per_tensor(torch.zeros(10), 0.1, 0, torch.qint8)
    return h.state_dict_file(directory, mlp_tensors() | {"fc3.bias": quantized}, "quant.pt")


def setstate_hook(directory: Path, canary: Path) -> Path:
    return h.torchscript_setstate_hook(directory, h.overwrite_canary_code(canary))


DOOR: dict[str, Case] = {
    "shell_pickle": Case(h.shell_pickle_zip, MLP_SPEC, "invalid_upload", says=(
        f"which loading would import and call: {os.name}.system.",)),
    "exec_pickle": Case(h.exec_pickle_zip, MLP_SPEC, "invalid_upload",
                        says=(": builtins.exec.",)),
    "raw_shell_pickle": Case(h.raw_shell_pickle, MLP_SPEC, "unsupported_media_type",
                             status=415),
    "whole_module": Case(whole_module, MLP_SPEC, "invalid_upload", says=(
        "whole pickled model", "torch.nn.modules.linear.Linear")),
    "torchscript_setstate": Case(setstate_hook, TS_SPEC, "invalid_upload",
                                 says=("defines __setstate__",)),
    "zip_bomb": Case(lambda d, c: h.zip_bomb(d), MLP_SPEC, "payload_too_large",
                     says=("PRUNER_MAX_COMPRESSION_RATIO",), status=413),
    "many_entries": Case(lambda d, c: h.many_entries(d, 10_000), MLP_SPEC, "payload_too_large",
                         says=("10001 entries",), status=413),
    "path_climbs_out": Case(lambda d, c: h.zip_with_entry(d, "archive/../../etc/x"), MLP_SPEC,
                            "invalid_upload", says=("climbs out with '..'",)),
    "truncated": Case(truncated, MLP_SPEC, "invalid_upload"),
    "noise": Case(noise, MLP_SPEC, "unsupported_media_type", status=415),
    "storage_size_lies": Case(lying_storage, MLP_SPEC, "invalid_upload", says=("holds 16",)),
    "huge_tensor": Case(huge_tensor, MLP_SPEC, "payload_too_large",
                        says=("10000000000 elements",), status=413),
    "complex_tensor": Case(complex_tensor, MLP_SPEC, "invalid_upload",
                           says=("ComplexFloatStorage",)),
    "quantized_tensor": Case(quantized_tensor, MLP_SPEC, "invalid_upload",
                             says=("_rebuild_qtensor",)),
}


@pytest.mark.parametrize("case", DOOR.values(), ids=list(DOOR))
def test_refused_at_the_door(stack: Stack, tmp_path: Path, case: Case) -> None:
    canary = h.make_canary(tmp_path)
    body = assert_problem(submit(stack.client, case.make(tmp_path, canary), case.spec),
                          case.status, case.code)
    assert [part for part in case.says if part not in body["detail"]] == [], body["detail"]
    assert canary.read_text() == h.CANARY_TEXT


# --- files only the worker can refuse -----------------------------------------------------------


def nan_weight(directory: Path, canary: Path) -> Path:
    tensors = mlp_tensors()
    tensors["fc1.weight"][0, 0] = float("nan")
    return h.state_dict_file(directory, tensors, "nan.pt")


def lenet_for_mlp(directory: Path, canary: Path) -> Path:
    from worker.engine import registry

    return h.state_dict_file(directory, dict(registry.build("lenet5").state_dict()), "lenet.pt")


def wrong_output(directory: Path, canary: Path) -> Path:
    return h.save_script(h.WrongOutput(), directory / "wrong.pt")


WORKER: dict[str, Case] = {
    "torchscript_reads_canary": Case(h.torchscript_reads_canary, TS_SPEC, "unsafe_model",
                                     says=("aten::from_file in ",)),
    "torchscript_writes_canary": Case(h.torchscript_writes_canary, TS_SPEC, "unsafe_model",
                                      says=("aten::from_file in ",)),
    "nan_weight": Case(nan_weight, MLP_SPEC, "invalid_weights", says=(
        "tensors with NaN or Inf values: fc1.weight (1 of 200704)",)),
    "architecture_mismatch": Case(lenet_for_mlp, MLP_SPEC, "architecture_mismatch",
                                  says=("unexpected keys: conv1.weight",)),
    "wrong_output_shape": Case(wrong_output, TS_SPEC, "incompatible_model", says=(
        "tensor of shape [2, 5]; expected a float tensor of shape [2, 10]",)),
}


@pytest.mark.parametrize("case", WORKER.values(), ids=list(WORKER))
def test_refused_in_the_worker(stack: Stack, tmp_path: Path, case: Case) -> None:
    canary = h.make_canary(tmp_path)
    response = submit(stack.client, case.make(tmp_path, canary), case.spec)
    message = failed_job(stack.client, response, case.code)
    assert [part for part in case.says if part not in message] == [], message
    assert canary.read_text() == h.CANARY_TEXT


def test_after_every_hostile_file_the_stack_still_serves(stack: Stack,
                                                         trained_mlp: TrainedMLP) -> None:
    """Runs after the cases above (pytest keeps a module's order): the same API and worker,
    having refused all of them, complete a good job."""
    assert stack.worker.alive() and stack.api.alive()
    good_job_succeeds(stack.client, trained_mlp)


# --- limits: a stack of their own with tight ones -----------------------------------------------


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


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("limited"), max_upload_bytes=2 * 1024 * 1024,
                     job_cpu_time_limit_s=25) as running:
        yield running


def test_an_upload_over_the_limit_answers_413(limited: Stack, tmp_path: Path) -> None:
    big = h.state_dict_file(tmp_path, {"w": torch.zeros(600_000)}, "big.pt")
    body = assert_problem(submit(limited.client, big, MLP_SPEC), 413, "payload_too_large")
    assert "2097152" in body["detail"]


def test_a_job_spinning_past_its_cpu_limit_fails_and_the_worker_goes_on(
    limited: Stack, trained_mlp: TrainedMLP, tmp_path: Path
) -> None:
    spins = h.save_script(Spins(), tmp_path / "spins.pt")
    message = failed_job(limited.client, submit(limited.client, spins, TS_SPEC),
                         "resource_limit")
    assert "SIGXCPU" in message
    good_job_succeeds(limited.client, trained_mlp)
