"""A shrink job over real HTTP: a scripted residual CNN goes in, a smaller TorchScript archive
comes out that plain ``torch.jit.load`` runs with the report's shapes and accuracy."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from api_tests.models import accuracy
from api_tests.support.stacks import submit, wait_for
from stack.local import Stack

pytestmark = pytest.mark.e2e


def test_shrink_job_on_a_torchscript_upload(stack: Stack, tmp_path: Path,
                                            mnist_test: tuple[Any, Any]) -> None:
    import torch

    from api_tests.worker.engine.shrink.models import ResidualNet, randomize_batchnorm

    path = tmp_path / "residual.pt"
    torch.jit.save(torch.jit.script(randomize_batchnorm(ResidualNet())), str(path))
    spec = {"pruning": {"method": "ln_structured", "dim": 0, "amount": 0.5, "shrink": True},
            "finetune": {"epochs": 0}}
    response = submit(stack.client, path, spec)
    assert response.status_code == 202, response.text
    job = wait_for(stack.client, response.json()["id"])
    assert job["status"] == "succeeded", job
    report = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    download = stack.client.get(f"/v1/jobs/{job['id']}/model", params={"format": "torchscript"})
    assert download.status_code == 200, download.text

    model = torch.jit.load(io.BytesIO(download.content)).eval()  # plain PyTorch
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    for change in report["shrink"]["tensors"]:
        assert shapes[change["name"]] == change["shape_after"], change
    assert shapes["stem.weight"] == [4, 1, 3, 3] and shapes["fc.weight"] == [10, 196]
    assert report["shrink"]["widths"]["stem"] == 4
    stated = report["accuracy"]["after_finetune"]["accuracy"]
    assert accuracy(model, mnist_test) == pytest.approx(stated, abs=1e-4)
