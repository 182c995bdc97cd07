"""Deep Compression over real HTTP: a job with ``quantize`` and ``deploy``, its compressed
download decoded by ``pruner decode`` in a process without torch, and the decoded model's
accuracy recomputed as a user would, equal to the report's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from api_tests.models import UserMLP, accuracy
from api_tests.support.stacks import REPO_ROOT, TrainedMLP, submit, wait_for
from stack.local import Stack

pytestmark = pytest.mark.e2e

SPEC = {"pruning": {"amount": 0.9}, "finetune": {"epochs": 1, "batch_size": 256},
        "quantize": {"method": "kmeans", "bits": 5, "epochs": 1}, "deploy": {}}


def test_quantised_job_decoded_without_torch(stack: Stack, trained_mlp: TrainedMLP,
                                             mnist_test: tuple[Any, Any],
                                             tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    response = submit(stack.client, trained_mlp.torchscript, SPEC)
    assert response.status_code == 202, response.text
    job = wait_for(stack.client, response.json()["id"])
    assert job["status"] == "succeeded", (job, stack.logs())
    report = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    download = stack.client.get(f"/v1/jobs/{job['id']}/model?format=compressed")
    assert download.status_code == 200
    source = tmp_path / f"{job['id']}-pruned.prz"
    source.write_bytes(download.content)

    target = tmp_path / "model.safetensors"
    code = ("import sys; from client.cli import main; "
            f"rc = main(['decode', {str(source)!r}, '-o', {str(target)!r}]); "
            "sys.exit(rc or (3 if 'torch' in sys.modules else 0))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr

    model = UserMLP()
    model.load_state_dict(load_file(str(target)))
    stated = report["accuracy"]["after_finetune"]["accuracy"]
    assert abs(accuracy(model, mnist_test) - stated) <= 0.0001  # one test image at most
    assert [len(torch.unique(model.state_dict()[n][model.state_dict()[n] != 0])) <= 32
            for n in ("fc1.weight", "fc2.weight", "fc3.weight")] == [True] * 3
    assert report["compressed"]["bytes"] == len(download.content)
    assert report["accuracy"]["before_quantization"]["split"] == "test"
    runtimes = report["cost"]["runtimes"]
    assert runtimes["onnx"]["available"] is True  # TorchScript through TS2EPConverter
    assert abs(runtimes["onnx"]["accuracy"] - stated) <= 1e-4
    assert runtimes["int8"]["reason"].startswith("int8_unavailable")  # no eager Linear
    # the int8 ONNX file: downloadable exactly when the report says it was kept (faster)
    onnx_int8 = runtimes["onnx_int8"]
    assert onnx_int8["reference"] == "onnx" and set(onnx_int8["latency_ms"]) == {"batch_1000"}
    int8_file = stack.client.get(f"/v1/jobs/{job['id']}/model?format=onnx_int8")
    assert int8_file.status_code == (200 if onnx_int8["available"] else 404)
    if onnx_int8["available"]:
        assert len(int8_file.content) == onnx_int8["bytes"]
    else:
        assert onnx_int8["reason"].startswith("onnx_int8_slower: ")
