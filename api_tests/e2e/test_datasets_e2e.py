"""Datasets end to end over real HTTP (uvicorn, a Celery worker, redis-server): upload a
dataset, run a job on it, download the model and recompute the accuracy on the dataset's test
split; a 3 x 32 x 32 coloured-MNIST dataset through the 3-channel path; a model that does not
fit the dataset refused before training."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from api_tests.support.stacks import Stack, mnist_root, submit, wait_for
from client.dataset_file import write_dataset
from testkit.digits import DigitsCNN, accuracy, normalised, train, write_digits
from worker.engine import scripting

pytestmark = pytest.mark.e2e


def upload(stack: Stack, path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        response = stack.client.post("/v1/datasets", files={"dataset": (path.name, f)})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def run(stack: Stack, model: Path, spec: dict[str, Any]) -> dict[str, Any]:
    response = submit(stack.client, model, spec)
    assert response.status_code == 202, response.text
    return wait_for(stack.client, response.json()["id"], timeout=240)


def downloaded(stack: Stack, job: dict[str, Any]) -> Any:
    response = stack.client.get(f"/v1/jobs/{job['id']}/model")
    assert response.status_code == 200, response.text
    return torch.jit.load(io.BytesIO(response.content)).eval()


def report(stack: Stack, job: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    return body


def test_digits_job_reports_the_accuracy_the_download_reproduces(stack: Stack,
                                                                  tmp_path: Path) -> None:
    path = write_digits(tmp_path / "digits.safetensors")
    dataset = upload(stack, path)
    x_train, y_train = normalised(path, 0)
    x_test, y_test = normalised(path, 2)
    scripting.script(train(DigitsCNN(), x_train, y_train, epochs=4)).save(
        str(tmp_path / "cnn.pt"))
    job = run(stack, tmp_path / "cnn.pt", {
        "data": {"dataset": dataset["id"]},
        "pruning": {"method": "l1_unstructured", "scope": "global", "amount": 0.5},
        "finetune": {"epochs": 1, "validation_size": 150}})
    assert job["status"] == "succeeded", job
    stated = report(stack, job)
    measured = accuracy(downloaded(stack, job), x_test, y_test)
    assert (stated["dataset"]["name"], stated["dataset"]["sha256"], stated["dataset"]["test"],
            stated["accuracy"]["after_finetune"]["split"]) == (
        dataset["id"], dataset["sha256"], 359, "test")
    assert measured == pytest.approx(stated["accuracy"]["after_finetune"]["accuracy"], abs=1e-6)


def coloured_mnist(path: Path, n: int = 600, test: int = 150) -> Path:
    """MNIST test digits padded to 32 x 32, each drawn in a seeded random colour."""
    from torchvision.datasets import MNIST

    source = MNIST(str(mnist_root()), train=False, download=False)
    digits = source.data[:n].numpy().astype(np.float32) / 255  # (n, 28, 28)
    colours = np.random.default_rng(0).uniform(0.3, 1.0, size=(n, 3, 1, 1))
    images = np.zeros((n, 3, 32, 32), np.float32)
    images[:, :, 2:30, 2:30] = digits[:, None] * colours
    splits = np.array([0] * (n - test) + [2] * test, np.uint8)
    return write_dataset(path, np.round(images * 255).astype(np.uint8),
                         source.targets[:n].numpy(), splits=splits)


def cnn(in_channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=2), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 10))


def test_a_coloured_dataset_runs_through_the_three_channel_path(stack: Stack,
                                                                 tmp_path: Path) -> None:
    dataset = upload(stack, coloured_mnist(tmp_path / "coloured.safetensors"))
    scripting.script(cnn(3)).save(str(tmp_path / "rgb.pt"))
    job = run(stack, tmp_path / "rgb.pt", {
        "data": {"dataset": dataset["id"]},
        "finetune": {"epochs": 2, "validation_size": 50, "validation_from": "train"}})
    assert job["status"] == "succeeded", job
    stated = report(stack, job)
    assert (dataset["shape"], stated["dataset"]["shape"], stated["dataset"]["train"],
            stated["dataset"]["validation"], stated["dataset"]["test"]) == (
        [3, 32, 32], [3, 32, 32], 400, 50, 150)
    x_test, y_test = per_channel_normalised(tmp_path / "coloured.safetensors")
    measured = accuracy(downloaded(stack, job), x_test, y_test)
    assert measured == pytest.approx(stated["accuracy"]["after_finetune"]["accuracy"], abs=1e-6)


def per_channel_normalised(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split normalised by the training split's per-channel mean and std (what the
    service does for a file without mean/std), computed here from the file."""
    from safetensors.numpy import load_file

    a = load_file(str(path))
    x = torch.from_numpy(a["images"]).float().div(255)
    train = x[torch.from_numpy(a["splits"] == 0)]
    mean, std = train.mean(dim=(0, 2, 3)), train.std(dim=(0, 2, 3))
    test = torch.from_numpy(a["splits"] == 2)
    x = (x[test] - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x, torch.from_numpy(a["labels"])[test]


def test_a_model_that_does_not_fit_fails_before_training(stack: Stack, tmp_path: Path) -> None:
    dataset = upload(stack, coloured_mnist(tmp_path / "coloured.safetensors"))
    scripting.script(cnn(1)).save(str(tmp_path / "grey.pt"))
    job = run(stack, tmp_path / "grey.pt", {"data": {"dataset": dataset["id"]},
                                            "finetune": {"validation_size": 50}})
    assert (job["status"], job["error"]["code"], "3x32x32 images" in job["error"]["message"]) \
        == ("failed", "architecture_mismatch", True), json.dumps(job)
