"""A finished job's model as a user gets it over HTTP (the e2e ``stack``), and the check that
it holds what the report states (``api_tests.models.UserMLP``: the MLP the e2e tests send)."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from stack.local import Stack

MLP_TARGETS = ("fc1.weight", "fc2.weight", "fc3.weight")


MLP_TARGETED_ELEMENTS = 784 * 256 + 256 * 128 + 128 * 10


def download(stack: Stack, job: dict[str, Any]) -> bytes:
    response = stack.client.get(f"/v1/jobs/{job['id']}/model")
    assert response.status_code == 200, response.text
    body = response.content
    sha = hashlib.sha256(body).hexdigest()
    assert sha == job["model"]["sha256"]
    assert response.headers["etag"].strip('"') == sha
    return body


def load_model(body: bytes, fmt: str) -> Any:
    import torch

    from api_tests.models import UserMLP

    if fmt == "torchscript":
        return torch.jit.load(io.BytesIO(body)).eval()
    model = UserMLP()
    model.load_state_dict(torch.load(io.BytesIO(body), weights_only=True))
    return model.eval()


def check_against_report(stack: Stack, job: dict[str, Any], model: Any,
                          mnist_test: tuple[Any, Any]) -> None:
    report = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    params = dict(model.named_parameters())
    by_name = {t["name"]: t for t in report["tensors"]}
    zeros = 0
    for name in MLP_TARGETS:
        counted = int((params[name] == 0).sum())
        assert counted == by_name[name]["zeros"], name
        zeros += counted
    # 30% of the targeted weights under one global threshold: exactly round(0.3 * n).
    assert zeros == round(0.3 * MLP_TARGETED_ELEMENTS) == report["targeted"]["zeros"]
    from api_tests.models import accuracy

    measured = accuracy(model, mnist_test)
    stated = report["accuracy"]["after_finetune"]["accuracy"]
    assert abs(measured - stated) * 100 <= 0.05, (measured, stated)
    assert stated > 0.9
