"""The ``pruner`` command as a user runs it (a subprocess) against the real stack."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api_tests.conftest import REPO_ROOT, Stack, wait_for
from api_tests.e2e.stack_command import random_mlp

pytestmark = pytest.mark.e2e

QUICK = '{"finetune": {"epochs": 0}}'  # prune and evaluate only
LONG = '{"finetune": {"epochs": 20, "batch_size": 32}}'


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_mlp(tmp_path_factory.mktemp("cli") / "mlp.state_dict.pt")


def cli_env(stack: Stack) -> dict[str, str]:
    return {**stack.env, "PRUNER_URL": stack.base_url}


def pruner(stack: Stack, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client", *map(str, args)], cwd=cwd,
                          env=cli_env(stack), capture_output=True, text=True, timeout=300)


def test_submit_wait_downloads_the_model_and_report(stack: Stack, mlp: Path,
                                                    tmp_path: Path) -> None:
    done = pruner(stack, "submit", mlp, "--arch", "mnist_mlp", "--spec", QUICK, "--wait",
                  "-o", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    model_path, report_path = map(Path, done.stdout.split())
    job_id = model_path.name.removesuffix("-pruned.pth")
    job = stack.client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert hashlib.sha256(model_path.read_bytes()).hexdigest() == job["model"]["sha256"]
    report = json.loads(report_path.read_text())
    assert report["targeted"]["zeros"] == round(0.3 * (784 * 256 + 256 * 128 + 128 * 10))
    assert f"{job_id}: succeeded" in done.stderr  # plain progress lines: stderr is no TTY

    status = pruner(stack, "status", job_id, "--json")
    assert json.loads(status.stdout)["status"] == "succeeded"
    listed = pruner(stack, "list", "--status", "succeeded", "--json")
    assert job_id in [json.loads(line)["id"] for line in listed.stdout.splitlines()]
    printed = pruner(stack, "report", job_id)
    assert json.loads(printed.stdout) == report
    again = pruner(stack, "download", job_id, "-o", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / model_path.name).read_bytes() == model_path.read_bytes()


def test_submit_wait_through_a_failed_job_exits_1_with_its_code(stack: Stack, mlp: Path,
                                                                tmp_path: Path) -> None:
    done = pruner(stack, "submit", mlp, "--arch", "lenet5", "--spec", QUICK, "--wait",
                  "-o", tmp_path)
    assert done.returncode == 1, done.stderr
    assert "failed: architecture_mismatch: " in done.stderr
    assert done.stdout == "" and list(tmp_path.iterdir()) == []  # nothing downloaded


def test_submit_wait_through_a_cancel_exits_3(stack: Stack, mlp: Path, tmp_path: Path) -> None:
    waiting = subprocess.Popen(
        [sys.executable, "-m", "client", "submit", str(mlp), "--arch", "mnist_mlp",
         "--spec", LONG, "--wait", "-o", str(tmp_path)],
        cwd=REPO_ROOT, env=cli_env(stack), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert waiting.stderr is not None
        first = waiting.stderr.readline()
        assert first.startswith("submitted job "), first
        job_id = first.split()[-1]
        wait_for(stack.client, job_id, ("running",), timeout=120)
        time.sleep(0.5)
        cancel = pruner(stack, "cancel", job_id)
        assert cancel.returncode == 0, cancel.stderr
        assert "cancel requested" in cancel.stdout
        assert waiting.wait(60) == 3
        rest = waiting.stderr.read()
        assert f"{job_id}: running" in rest and f"job {job_id} was cancelled" in rest
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()


def test_errors_exit_2_with_the_problem_code(stack: Stack) -> None:
    missing = pruner(stack, "status", "no-such-job")
    assert missing.returncode == 2
    assert "404 not_found" in missing.stderr
    bad_spec = pruner(stack, "submit", REPO_ROOT / "README.md", "--spec", '{"pruning": 1}')
    assert bad_spec.returncode == 2
    assert "422 validation_error" in bad_spec.stderr
