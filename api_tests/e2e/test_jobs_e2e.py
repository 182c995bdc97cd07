"""End to end over real HTTP: uvicorn, a Celery worker and redis-server (the ``stack`` fixture).

A user's view: submit the MLP, watch it, download the pruned model, and check with plain
PyTorch that the file holds exactly the zeros and the accuracy the report states.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from api_tests.support.downloads import (
    MLP_TARGETED_ELEMENTS,
    check_against_report,
    download,
    load_model,
)
from api_tests.support.problems import assert_problem
from api_tests.support.stacks import TrainedMLP, submit, wait_for, wait_running
from stack.local import Stack

pytestmark = pytest.mark.e2e

@pytest.mark.parametrize("kind", ["torchscript", "state_dict"])
def test_upload_prune_download_matches_report(stack: Stack, trained_mlp: TrainedMLP,
                                              mnist_test: tuple[Any, Any], kind: str) -> None:
    spec: dict[str, Any] = {
        "pruning": {"method": "l1_unstructured", "scope": "global", "amount": 0.3},
        "finetune": {"epochs": 1},
    }
    if kind == "state_dict":
        spec["architecture"] = "mnist_mlp"
    response = submit(stack.client, getattr(trained_mlp, kind), spec)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    job = wait_for(stack.client, job["id"])
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 1
    assert job["model"]["format"] == kind
    body = download(stack, job)
    model = load_model(body, kind)
    check_against_report(stack, job, model, mnist_test)
    _check_cost_and_compact_download(stack, job, model, len(body))


def _check_cost_and_compact_download(stack: Stack, job: dict[str, Any], model: Any,
                                     size: int) -> None:
    """report.cost agrees with the files served, and the compact download decodes (with the
    README's lines) to the very tensors of the primary download."""
    import torch
    from safetensors.torch import load as load_safetensors

    report = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    after = report["cost"]["after"]
    assert after["bytes"][job["model"]["format"]] == size
    assert after["parameters"] == report["all_parameters"]["elements"]
    assert after["nonzero_parameters"] == after["parameters"] - report["all_parameters"]["zeros"]
    assert report["cost"]["speedup"] is None and after["flops"] == 2 * MLP_TARGETED_ELEMENTS
    response = stack.client.get(f"/v1/jobs/{job['id']}/model?format=sparse_safetensors")
    assert response.status_code == 200 and len(response.content) == after["bytes"][
        "sparse_safetensors"]
    f = load_safetensors(response.content)
    sd = {k: torch.zeros(8 * len(f[k + "@mask"]), dtype=v.dtype).masked_scatter_(((f[k + "@mask"][:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).bool().flatten(), v)[: f[k + "@shape"].prod()].view(f[k + "@shape"].tolist()) if k + "@mask" in f else v for k, v in f.items() if "@" not in k}  # noqa: E501
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_progress_moves_while_a_job_runs(stack: Stack, trained_mlp: TrainedMLP) -> None:
    spec = {"pruning": {"amount": 0.5}, "finetune": {"epochs": 3, "batch_size": 128}}
    job = submit(stack.client, trained_mlp.torchscript, spec).json()
    seen: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        current = stack.client.get(f"/v1/jobs/{job['id']}").json()
        progress = current["progress"] or {}
        point = (progress.get("phase"), progress.get("epoch"), progress.get("step"))
        if not seen or seen[-1] != point:
            seen.append(point)
        if current["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert current["status"] == "succeeded", (current, stack.logs())
    finetuning = [p for p in seen if p[0] == "finetuning"]
    epochs = {p[1] for p in finetuning}
    assert {1, 2, 3} <= epochs, seen  # every epoch was shown...
    assert len({p for p in finetuning if p[2]}) >= 4, seen  # ...and steps moved within them


def test_cancel_a_running_job(stack: Stack, trained_mlp: TrainedMLP) -> None:
    spec = {"finetune": {"epochs": 50, "batch_size": 16}}
    job = submit(stack.client, trained_mlp.torchscript, spec).json()
    wait_running(stack, job["id"], phase="finetuning", timeout=120)
    asked = time.monotonic()
    response = stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202, response.text  # running: it stops at the next batch
    assert response.json()["status"] == "running" and response.json()["cancel_requested"]
    done = wait_for(stack.client, job["id"], timeout=60)
    assert done["status"] == "cancelled", done
    assert time.monotonic() - asked < 30  # stopped at a batch, not at the end of 50 epochs
    assert done["model"] is None
    assert_problem(stack.client.get(f"/v1/jobs/{job['id']}/model"), 409, "no_model")
    assert_problem(stack.client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_finished")
