"""The ``pruner`` command as a user runs it (a subprocess) against the real stack."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api_tests.e2e.stack_command import random_mlp
from api_tests.support.stacks import REPO_ROOT, wait_for
from client.cli import main
from stack.local import Stack

pytestmark = pytest.mark.e2e

QUICK = '{"finetune": {"epochs": 0}}'  # prune and evaluate only
LONG = '{"finetune": {"epochs": 20, "batch_size": 32}}'


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_mlp(tmp_path_factory.mktemp("cli") / "mlp.state_dict.pt")


def cli_env(stack: Stack) -> dict[str, str]:
    return {**stack.env, "PRUNER_URL": stack.base_url, "PRUNER_API_KEY": stack.api_key}


def pruner(stack: Stack, *args: object) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, as a user or a pipeline runs it."""
    return subprocess.run([sys.executable, "-m", "client", *map(str, args)], cwd=REPO_ROOT,
                          env=cli_env(stack), capture_output=True, text=True, timeout=300)


def pruner_here(stack: Stack, capsys: pytest.CaptureFixture[str],
                *args: object) -> tuple[int, str, str]:
    """The same command's code in this process (a process start costs seconds on a loaded
    machine): exit status, stdout, stderr."""
    capsys.readouterr()
    code = main(["--url", stack.base_url, "--api-key", stack.api_key, *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_wait_downloads_the_model_and_report(
    stack: Stack, mlp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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

    code, out, _ = pruner_here(stack, capsys, "status", job_id, "--json")
    assert (code, json.loads(out)["status"]) == (0, "succeeded")
    code, out, _ = pruner_here(stack, capsys, "list", "--status", "succeeded", "--json")
    assert job_id in [json.loads(line)["id"] for line in out.splitlines()]
    code, out, _ = pruner_here(stack, capsys, "report", job_id)
    assert (code, json.loads(out)) == (0, report)
    code, out, err = pruner_here(stack, capsys, "download", job_id, "-o", tmp_path / "again")
    assert code == 0, err
    assert (tmp_path / "again" / model_path.name).read_bytes() == model_path.read_bytes()
    code, out, err = pruner_here(stack, capsys, "watch", job_id)  # an ended job: its end
    assert (code, out) == (0, "") and f"{job_id}: succeeded" in err


def test_submit_wait_through_a_failed_job_exits_1_with_its_code(stack: Stack, mlp: Path,
                                                                tmp_path: Path) -> None:
    done = pruner(stack, "submit", mlp, "--arch", "lenet5", "--spec", QUICK, "--wait",
                  "-o", tmp_path)
    assert done.returncode == 1, done.stderr
    assert "failed: architecture_mismatch: " in done.stderr
    assert done.stdout == "" and list(tmp_path.iterdir()) == []  # nothing downloaded
    job_id = done.stderr.splitlines()[0].split()[-1]
    watched = pruner(stack, "watch", job_id)
    assert watched.returncode == 1 and "failed: architecture_mismatch: " in watched.stderr


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
        assert cancel.stdout.startswith(f"{job_id}: running ") and \
            cancel.stdout.endswith(" (cancel requested)\n"), cancel.stdout
        assert waiting.wait(60) == 3
        rest = waiting.stderr.read()
        assert f"{job_id}: running" in rest and f"job {job_id} was cancelled" in rest
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()


def test_errors_exit_2_with_the_problem_code(stack: Stack,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = pruner_here(stack, capsys, "status", "no-such-job")
    assert (code, err) == (2, "pruner: 404 not_found: no job 'no-such-job'\n")
    code, _, err = pruner_here(stack, capsys, "submit", REPO_ROOT / "README.md",
                               "--spec", '{"pruning": 1}')
    assert code == 2 and err.startswith("pruner: 422 validation_error: "), err
