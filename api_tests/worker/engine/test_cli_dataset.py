"""``prune-model --dataset FILE``: a job on a local dataset file, judged by the API's checker
first (a refused file exits 2 naming the array, before any work)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from api_tests.core.datasets.files import coloured, write_npz, write_safetensors
from core.jobs.report import Report
from worker.engine import cli, scripting


def scripted_linear(path: Path) -> Path:
    """An untrained 3 x 32 x 32 -> 4 classes TorchScript model."""
    torch.manual_seed(0)
    torch.jit.save(scripting.script(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))),
                   str(path))
    return path


def run(tmp_path: Path, dataset: Path) -> int:
    return cli.main([str(scripted_linear(tmp_path / "m.pt")), "--dataset", str(dataset),
                     "--amount", "0.5", "--epochs", "1", "--device", "cpu", "--no-progress",
                     "-o", str(tmp_path / "out")])


@pytest.mark.parametrize("npz", [False, True])
def test_a_job_runs_on_a_dataset_file(tmp_path: Path, npz: bool) -> None:
    path = (write_npz(tmp_path / "d.npz", coloured()) if npz
            else write_safetensors(tmp_path / "d.safetensors", coloured()))
    assert run(tmp_path, path) == 0
    report = Report.model_validate_json((tmp_path / "out" / "report.json").read_text())
    assert report.dataset is not None
    assert (report.dataset.sha256, report.dataset.shape, report.dataset.classes,
            report.dataset.test, report.targeted.sparsity) == (
        hashlib.sha256(path.read_bytes()).hexdigest(), [3, 32, 32], 4, 10, 0.5)


def test_a_refused_dataset_file_exits_2_naming_the_array(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tensors = {**coloured(), "labels": coloured()["labels"].astype(np.float32)}
    assert run(tmp_path, write_safetensors(tmp_path / "d.safetensors", tensors)) == 2
    assert ("labels" in capsys.readouterr().err, (tmp_path / "out").exists()) == (True, False)
