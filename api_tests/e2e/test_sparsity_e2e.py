"""End to end over real HTTP: a gradual (AGP) job and a budget search, checked as a user would:
the downloaded model holds exactly the zeros the report states and scores its test accuracy."""

from __future__ import annotations

from typing import Any

import pytest

from api_tests.models import accuracy
from api_tests.support.downloads import MLP_TARGETED_ELEMENTS, MLP_TARGETS, download, load_model
from api_tests.support.stacks import TrainedMLP, submit, wait_for
from stack.local import Stack

pytestmark = pytest.mark.e2e


def _run(stack: Stack, trained_mlp: TrainedMLP, spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    response = submit(stack.client, trained_mlp.torchscript, spec)
    assert response.status_code == 202, response.text
    job = wait_for(stack.client, response.json()["id"])
    assert job["status"] == "succeeded", (job.get("error"), job, stack.logs())
    report = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    return load_model(download(stack, job), "torchscript"), report


def _check(model: Any, report: dict[str, Any], amount: float, test: tuple[Any, Any]) -> None:
    """``test``: the images the report's test figures come from (``report.data.test``)."""
    params = dict(model.named_parameters())
    counted = {name: int((params[name] == 0).sum()) for name in MLP_TARGETS}
    assert counted == {t["name"]: t["zeros"] for t in report["tensors"]}
    assert sum(counted.values()) == round(amount * MLP_TARGETED_ELEMENTS)
    stated = report["accuracy"]["after_finetune"]
    assert stated["split"] == "test"
    assert abs(accuracy(model, test) - stated["accuracy"]) <= 0.0005


@pytest.mark.parametrize("distill", [None, {"temperature": 2.0}], ids=["plain", "distilled"])
def test_agp_job(stack: Stack, trained_mlp: TrainedMLP, mnist_test: tuple[Any, Any],
                 distill: dict[str, float] | None) -> None:
    finetune: dict[str, Any] = {"epochs": 1, "batch_size": 128, "lr_schedule": "cosine"}
    if distill is not None:
        finetune["distill"] = distill
    spec = {"pruning": {"amount": 0.8, "schedule": {"kind": "agp", "end": 0.6,
                                                     "every_steps": 40}},
            "finetune": finetune}
    model, report = _run(stack, trained_mlp, spec)
    _check(model, report, 0.8, mnist_test)
    # it decides nothing: all 60000 train images fine-tune it, no validation split
    assert report["accuracy"]["validation"] is None
    assert report["data"]["train"]["images"] == 60000
    assert report["data"]["test"]["images"] == 10000
    assert report["spec"]["pruning"]["schedule"]["kind"] == "agp"
    assert report["accuracy"]["after_finetune"]["accuracy"] > 0.9
    if distill is None:
        assert report["spec"]["finetune"]["distill"] is None
        assert "teacher" not in report["timings_s"]
    else:  # the dense upload taught the pruned model: its targets were computed once
        assert report["spec"]["finetune"]["distill"] == {"weight": 0.5, "temperature": 2.0}
        assert report["timings_s"]["teacher"] > 0


def test_search_job(stack: Stack, trained_mlp: TrainedMLP, mnist_test: tuple[Any, Any]) -> None:
    spec = {"pruning": {"amount": 0.97},
            "finetune": {"epochs": 1, "batch_size": 256},
            "search": {"max_accuracy_drop": 0.02, "max_trials": 2}}
    model, report = _run(stack, trained_mlp, spec)
    search = report["search"]
    assert search["split"] == "validation" and len(search["trials"]) >= 1
    chosen = search["chosen_amount"]
    best = max((t for t in search["trials"] if t["within_budget"]), key=lambda t: t["amount"])
    assert best["amount"] == chosen and search["dense_accuracy"] - best["val_accuracy"] <= 0.02
    # decided on the even-indexed test images, reported on the odd-indexed ones
    images, labels = mnist_test
    _check(model, report, chosen, (images[1::2], labels[1::2]))
    validation = report["accuracy"]["validation"]
    assert validation["size"] == 5000 and validation["after_finetune"]["split"] == "validation"
    assert abs(accuracy(model, (images[0::2], labels[0::2]))
               - validation["after_finetune"]["accuracy"]) <= 0.0005
    assert report["data"]["validation_from"] == "test_half"
    assert report["accuracy"]["after_finetune"]["accuracy"] == best["test_accuracy"]


def test_target_job_and_unreachable_target(stack: Stack, trained_mlp: TrainedMLP,
                                           mnist_test: tuple[Any, Any]) -> None:
    # no fine-tuning at all (a fast job): a generous drop, the plumbing is what is checked
    spec: dict[str, Any] = {"finetune": {"epochs": 0}, "target": {
        "parameters": {"max_ratio": 0.5}, "max_accuracy_drop": 0.5, "max_trials": 2,
        "trial_images": 0}}
    model, report = _run(stack, trained_mlp, spec)
    target = report["target"]
    chosen = target["trials"][target["chosen"]]
    assert chosen["meets_constraint"]
    assert sum(p.numel() for p in model.parameters()) == chosen["constraint_value"] \
        <= target["bound"]
    images, labels = mnist_test
    stated = report["accuracy"]["after_finetune"]["accuracy"]
    assert abs(accuracy(model, (images[1::2], labels[1::2])) - stated) <= 0.0005
    # a bound no channel removal reaches: failed, the frontier as its report, no model
    spec["target"]["parameters"] = {"max": 1000}
    response = submit(stack.client, trained_mlp.torchscript, spec)
    job = wait_for(stack.client, response.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "target_unreachable"
    frontier = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    assert len(frontier["target"]["trials"]) == 2 and frontier["target"]["chosen"] is None
    assert stack.client.get(f"/v1/jobs/{job['id']}/model").status_code == 409


def test_compressed_target_job_serves_a_download_of_the_reported_size(
        stack: Stack, trained_mlp: TrainedMLP) -> None:
    """A bytes target on the compressed format over HTTP: sparsity x bits chosen, and the
    file ``?format=compressed`` serves weighs what report.target says, under the bound."""
    from client.decode import decode_bytes

    spec: dict[str, Any] = {
        "finetune": {"epochs": 0}, "quantize": {"epochs": 0}, "search": {"max_trials": 2},
        "target": {"bytes": {"max_ratio": 0.1, "format": "compressed"},
                   "max_accuracy_drop": 0.5, "trial_images": 0, "quantize_bits": [5]}}
    response = submit(stack.client, trained_mlp.torchscript, spec)
    assert response.status_code == 202, response.text
    job = wait_for(stack.client, response.json()["id"])
    assert job["status"] == "succeeded", (job.get("error"), stack.logs())
    report = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    target = report["target"]
    assert target["candidates"] == "sparsity_bits" and target["chosen"] is not None
    assert [t["bits"] for t in target["trials"]][0] == 5
    body = stack.client.get(f"/v1/jobs/{job['id']}/model?format=compressed").content
    assert len(body) == target["final_value"] == report["compressed"]["bytes"] \
        <= target["bound"]
    stored = sum(int((v != 0).sum()) for k, v in decode_bytes(body).items()
                 if k in MLP_TARGETS)
    assert stored == MLP_TARGETED_ELEMENTS - sum(t["zeros"] for t in report["tensors"])
