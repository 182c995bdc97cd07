"""A shrink job over real HTTP: a scripted residual CNN goes in, a smaller TorchScript archive
comes out that plain ``torch.jit.load`` runs with the report's shapes and accuracy; the same
CNN sent as a ``.pt2`` comes back as a smaller ``.pt2`` that plain ``torch.export.load`` runs
and our own door accepts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from api_tests.models import accuracy, assert_reproduces
from api_tests.support.stacks import submit, wait_for
from stack.local import Stack
from worker.engine import scripting

pytestmark = pytest.mark.e2e


def test_shrink_job_on_a_torchscript_upload(stack: Stack, tmp_path: Path,
                                            mnist_test: tuple[Any, Any]) -> None:
    import torch

    from api_tests.worker.engine.shrink.models import ResidualNet, randomize_batchnorm

    path = tmp_path / "residual.pt"
    torch.jit.save(scripting.script(randomize_batchnorm(ResidualNet())), str(path))
    spec = {"pruning": {"method": "ln_structured", "dim": 0, "amount": 0.5, "shrink": True},
            "finetune": {"epochs": 0}}
    report, model, shapes = shrunk_download(stack, path, spec)
    assert shapes["stem.weight"] == [4, 1, 3, 3] and shapes["fc.weight"] == [10, 196]
    assert report["shrink"]["widths"]["stem"] == 4
    stated = report["accuracy"]["after_finetune"]["accuracy"]
    assert_reproduces(accuracy(model, mnist_test), stated, mnist_test)


def test_shrink_job_on_a_pt2_upload(stack: Stack, tmp_path: Path,
                                    mnist_test: tuple[Any, Any]) -> None:
    from api_tests.security.hostile_pt2 import export_file
    from api_tests.worker.engine.shrink.models import ResidualNet, randomize_batchnorm
    from core.jobs.formats import ModelFormat
    from core.uploads import check_upload

    path = export_file(randomize_batchnorm(ResidualNet()), tmp_path / "residual.pt2")
    spec = {"pruning": {"method": "ln_structured", "dim": 0, "amount": 0.5, "shrink": True},
            "finetune": {"epochs": 0}}
    report, model, shapes = shrunk_download(stack, path, spec, "pt2")
    assert shapes["stem.weight"] == [4, 1, 3, 3] and shapes["fc.weight"] == [10, 196]
    assert (report["input"]["format"], report["output"]["format"]) == ("pt2", "pt2")
    assert report["cost"]["after"]["flops"] < report["cost"]["before"]["flops"]
    assert check_upload(tmp_path / "download", stack.settings) is ModelFormat.PT2
    stated = report["accuracy"]["after_finetune"]["accuracy"]
    assert_reproduces(accuracy(model, mnist_test), stated, mnist_test)


def test_shrink_job_on_a_scripted_mobilenet(stack: Stack, tmp_path: Path,
                                            mnist_test: tuple[Any, Any]) -> None:
    """torchvision's MobileNetV2 (width 0.25, scripted): depthwise convs, residual adds and a
    3-channel stem, fed MNIST as 3 x 32 x 32 through input.channels and input.size."""
    import torch
    import torch.nn.functional as F

    from api_tests.worker.engine.shrink.models import randomize_batchnorm
    from testkit import zoo

    path = tmp_path / "mobilenet.pt"
    model = randomize_batchnorm(zoo.build("mobilenet_v2"))
    torch.jit.save(zoo.compile_(model, "script", "mobilenet_v2"), str(path))
    spec = {"input": {"channels": 3, "size": 32},
            "pruning": {"method": "ln_structured", "dim": 0, "amount": 0.5, "shrink": True,
                        "exclude": ["classifier*"]},
            "finetune": {"epochs": 0}}
    report, model, shapes = shrunk_download(stack, path, spec)
    assert shapes["features.1.conv.0.0.weight"] == [4, 1, 3, 3]  # depthwise: 8 -> 4 channels
    images, labels = mnist_test  # (N, 1, 28, 28) as the job normalises them
    fed = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    stated = report["accuracy"]["after_finetune"]["accuracy"]
    # an untrained model's logits nearly tie, so a batch size's rounding flips a few argmaxes
    assert accuracy(model, (fed.expand(-1, 3, -1, -1), labels)) == pytest.approx(stated,
                                                                                abs=5e-3)


def shrunk_download(stack: Stack, path: Path, spec: dict[str, Any],
                    fmt: str = "torchscript"
                    ) -> tuple[dict[str, Any], Any, dict[str, list[int]]]:
    """Run a shrink job; its report, its TorchScript (or ``pt2``) download loaded with plain
    ``torch.jit.load`` (``torch.export.load``; the file kept beside ``path`` as
    ``download``), and that model's shapes, checked against the report's."""
    import torch

    response = submit(stack.client, path, spec)
    assert response.status_code == 202, response.text
    job = wait_for(stack.client, response.json()["id"])
    assert job["status"] == "succeeded", job.get("error")
    report: dict[str, Any] = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    download = stack.client.get(f"/v1/jobs/{job['id']}/model", params={"format": fmt})
    assert download.status_code == 200, download.text
    if fmt == "pt2":
        (path.parent / "download").write_bytes(download.content)
        model = torch.export.load(path.parent / "download").module()  # plain PyTorch
    else:
        model = torch.jit.load(io.BytesIO(download.content)).eval()  # plain PyTorch
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    for change in report["shrink"]["tensors"]:
        assert shapes[change["name"]] == change["shape_after"], change
    return report, model, shapes
