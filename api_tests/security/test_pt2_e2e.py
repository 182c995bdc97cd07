""".pt2 through the real stack (uvicorn, a Celery worker and its job process, redis-server;
fixtures in api_tests/conftest.py): a job on an exported program, downloaded as .pt2 and
reloaded in plain torch with the report's zeros, and a TorchScript job's .pt2 download; the
hostile .pt2 corpus refused at the door, each case with its status, code and reason, the
canary untouched; and the same stack then still completes a good .pt2 job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from api_tests.security import hostile as h
from api_tests.security import hostile_pt2 as p
from api_tests.support.problems import assert_problem
from api_tests.support.stacks import submit, wait_for
from stack.local import Stack
from worker.engine import scripting

pytestmark = pytest.mark.e2e

SPEC: dict[str, Any] = {"pruning": {"method": "l1_unstructured", "amount": 0.5},
                        "finetune": {"epochs": 0}}


def _succeeded_pt2_job(stack: Stack, tmp_path: Path) -> dict[str, Any]:
    response = submit(stack.client, p.good_pt2(tmp_path), SPEC)
    assert response.status_code == 202, response.text
    job = wait_for(stack.client, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def test_a_pt2_job_downloads_as_pt2_and_reloads(stack: Stack, tmp_path: Path) -> None:
    job = _succeeded_pt2_job(stack, tmp_path)
    report = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    assert (report["input"]["format"], report["output"]["format"]) == ("pt2", "pt2")
    response = stack.client.get(f"/v1/jobs/{job['id']}/model")
    assert response.status_code == 200
    assert response.headers["content-disposition"].endswith(f'{job["id"]}-pruned.pt2"')
    downloaded = tmp_path / "pruned.pt2"
    downloaded.write_bytes(response.content)
    program = torch.export.load(str(downloaded))
    zeros = {t["name"]: int((program.state_dict[t["name"]] == 0).sum())
             for t in report["tensors"]}
    assert zeros == {t["name"]: t["zeros"] for t in report["tensors"]}
    assert program.module()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    safetensors = stack.client.get(f"/v1/jobs/{job['id']}/model?format=safetensors")
    assert safetensors.status_code == 200


def test_a_torchscript_job_also_returns_a_pt2(stack: Stack, tmp_path: Path) -> None:
    """The migration path: send TorchScript once, keep the .pt2 that comes back."""
    torch.manual_seed(0)
    script = tmp_path / "tiny.pt"
    torch.jit.save(scripting.script(p.TinyNet()), str(script))
    response = submit(stack.client, script, SPEC)
    assert response.status_code == 202, response.text
    job = wait_for(stack.client, response.json()["id"])
    assert job["status"] == "succeeded", job
    report = stack.client.get(f"/v1/jobs/{job['id']}/report").json()
    download = stack.client.get(f"/v1/jobs/{job['id']}/model?format=pt2")
    assert download.status_code == 200
    (tmp_path / "pruned.pt2").write_bytes(download.content)
    program = torch.export.load(str(tmp_path / "pruned.pt2"))
    zeros = {t["name"]: int((program.state_dict[t["name"]] == 0).sum())
             for t in report["tensors"]}
    assert zeros == {t["name"]: t["zeros"] for t in report["tensors"]}


@pytest.mark.parametrize("case", list(p.CORPUS))
def test_the_hostile_corpus_is_refused_at_the_door(
    stack: Stack, tmp_path: Path, case: str
) -> None:
    canary = h.make_canary(tmp_path)
    make, kind, says = p.CORPUS[case]
    status, code = (413, "payload_too_large") if kind == "too_large" else (422, "invalid_upload")
    body = assert_problem(submit(stack.client, make(tmp_path, canary), SPEC), status, code)
    assert says in body["detail"]
    assert canary.read_text() == h.CANARY_TEXT


def test_after_the_corpus_the_stack_still_serves(stack: Stack, tmp_path: Path) -> None:
    """Runs after the cases above (pytest keeps a module's order)."""
    assert stack.worker.alive() and stack.api.alive()
    _succeeded_pt2_job(stack, tmp_path)
