"""The compact format through the API: a compact upload is accepted, hostile ones are refused
at the door with their codes, and ?format=sparse_safetensors downloads the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from api_tests.service.factories import finished_job
from api_tests.support.api import Api
from api_tests.support.problems import assert_problem
from core.storage.protocols import model_file
from worker.engine import sparse_layout as compact

META = {"format": "pt", "pruner.layout": "bitmask-v1"}


def compact_file(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    path = folder / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=META)
    return path


@pytest.fixture
def encoded() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    weight = torch.randn(10, 20)
    weight[weight.abs() < 1.5] = 0
    return compact.encode({"fc.weight": weight, "fc.bias": torch.zeros(10)})


def test_compact_upload_is_accepted(api: Api, tmp_path: Path,
                                    encoded: dict[str, torch.Tensor]) -> None:
    response = api.submit(compact_file(tmp_path, "ok.safetensors", encoded))
    assert response.status_code == 202, response.text
    assert response.json()["upload"]["format"] == "safetensors"


def test_hostile_compact_uploads_are_refused_at_the_door(
    api: Api, tmp_path: Path, encoded: dict[str, torch.Tensor]
) -> None:
    short = compact_file(tmp_path, "short.safetensors",
                         {**encoded, "fc.weight": encoded["fc.weight"][:-1]})
    body = assert_problem(api.submit(short), 422, "invalid_upload")
    assert "but it holds" in body["detail"]
    bomb = compact_file(tmp_path, "bomb.safetensors", {
        "w": torch.ones(1), "w@mask": torch.ones(1, dtype=torch.uint8),
        "w@shape": torch.tensor([10**6, 10**6])})
    body = assert_problem(api.submit(bomb), 413, "payload_too_large")
    assert "declares shape [1000000, 1000000]" in body["detail"]
    assert api.queued_job_ids() == []


def test_sparse_safetensors_download(api: Api) -> None:
    job_id = finished_job(api)
    data = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    with api.blobs.writer(job_id, model_file("sparse_safetensors")) as f:
        f.write(data)
    response = api.client.get(f"/v1/jobs/{job_id}/model?format=sparse_safetensors")
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-disposition"].endswith(
        f'{job_id}-pruned.sparse.safetensors"')
