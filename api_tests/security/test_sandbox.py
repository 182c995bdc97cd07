"""The job process's limits (worker.sandbox), applied to real child processes."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.jobs.error_codes import JobErrorCode
from core.settings import GiB, MiB, Settings
from worker import sandbox


def run_child(settings: Settings, code: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=sandbox.preexec_limits(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


LIMITS_JSON = (
    "import json, resource as r; print(json.dumps({n: r.getrlimit(getattr(r, n)) for n in "
    "['RLIMIT_DATA', 'RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', "
    "'RLIMIT_CORE']}))"
)


def test_limits_reach_the_child() -> None:
    settings = Settings(worker_device="cpu", job_memory_limit_bytes=3 * GiB,
                        job_cpu_time_limit_s=600, max_upload_bytes=100 * MiB,
                        max_uncompressed_bytes=200 * MiB)
    seen = json.loads(run_child(settings, LIMITS_JSON).stdout)
    assert seen == {
        "RLIMIT_DATA": [3 * GiB, 3 * GiB],
        "RLIMIT_AS": [12 * GiB, 12 * GiB],
        "RLIMIT_CPU": [600, 605],
        "RLIMIT_FSIZE": [456 * MiB, 456 * MiB],
        "RLIMIT_NOFILE": [1024, 1024],
        "RLIMIT_CORE": [0, 0],
    }


def test_no_address_space_limit_where_cuda_may_run() -> None:
    limits = sandbox.resource_limits(Settings(worker_device="cuda"))
    assert resource.RLIMIT_AS not in limits
    assert limits[resource.RLIMIT_DATA] == (16 * GiB, 16 * GiB)


def test_memory_limit_stops_a_large_allocation() -> None:
    settings = Settings(worker_device="cpu", job_memory_limit_bytes=256 * MiB)
    child = run_child(settings, "b = bytearray(1024 ** 3)")
    assert child.returncode == 1
    assert child.stderr.strip().endswith("MemoryError")


def test_torch_runs_under_the_default_limits_and_its_oom_is_recognised() -> None:
    code = (
        "import torch\n"
        "from worker.sandbox import is_resource_limit_error\n"
        "print(float((torch.ones(64, 64) @ torch.ones(64, 64))[0, 0]))\n"
        "try:\n"
        "    torch.empty(2 * 1024 ** 3, dtype=torch.uint8)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, is_resource_limit_error(exc))\n"
    )
    settings = Settings(worker_device="cpu", job_memory_limit_bytes=1 * GiB)
    child = run_child(settings, code, cwd=Path(__file__).resolve().parents[2])
    assert child.stdout.split("\n")[:2] == ["64.0", "RuntimeError True"], child.stderr


def test_cpu_time_limit_ends_in_sigxcpu_and_resource_limit() -> None:
    settings = Settings(worker_device="cpu", job_cpu_time_limit_s=1)
    child = run_child(settings, "while True: pass")
    assert child.returncode == -signal.SIGXCPU
    assert sandbox.classify_exit(child.returncode, timed_out=False) is JobErrorCode.RESOURCE_LIMIT


def test_file_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "FSIZE_MARGIN_BYTES", 0)
    settings = Settings(worker_device="cpu", max_upload_bytes=1000, max_uncompressed_bytes=1000)
    code = (
        "import errno\n"
        "try:\n"
        "    with open('big', 'wb') as f:\n"
        "        f.write(bytes(5000))\n"
        "except OSError as exc:\n"
        "    print(exc.errno == errno.EFBIG)\n"
    )
    child = run_child(settings, code, cwd=tmp_path)
    assert child.stdout.strip() == "True"
    assert (tmp_path / "big").stat().st_size == 1000
    assert sandbox.is_resource_limit_error(OSError(errno.EFBIG, "File too large"))


def test_classify_exit() -> None:
    classify = sandbox.classify_exit
    assert classify(-signal.SIGKILL, timed_out=True) is JobErrorCode.TIMEOUT
    assert classify(-signal.SIGXCPU, timed_out=False) is JobErrorCode.RESOURCE_LIMIT
    assert classify(-signal.SIGXFSZ, timed_out=False) is JobErrorCode.RESOURCE_LIMIT
    assert classify(-signal.SIGKILL, False, oom_killed=True) is JobErrorCode.RESOURCE_LIMIT
    assert classify(-signal.SIGKILL, timed_out=False) is JobErrorCode.CRASHED
    assert classify(-signal.SIGSEGV, timed_out=False) is JobErrorCode.CRASHED
    assert classify(-signal.SIGABRT, timed_out=False) is JobErrorCode.CRASHED
    assert classify(1, timed_out=False) is JobErrorCode.CRASHED


def test_oom_kill_counter_reads_or_says_unknown() -> None:
    count = sandbox.oom_kills()
    assert count is None or count >= 0
    assert sandbox.is_resource_limit_error(MemoryError())
    assert not sandbox.is_resource_limit_error(RuntimeError("shapes do not match"))


def test_unknown_or_root_job_user_fails_in_the_parent() -> None:
    if os.geteuid() != 0:
        pytest.skip("only root switches users")
    with pytest.raises(ValueError, match="job_user 'no-such-user-x' does not exist"):
        sandbox.preexec_limits(Settings(job_user="no-such-user-x"))
    with pytest.raises(ValueError, match="is root"):
        sandbox.preexec_limits(Settings(job_user="root"))


def test_no_switch_without_job_user() -> None:
    assert sandbox.job_identity(Settings()) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches users")
def test_job_user_drops_privileges_but_can_do_its_job(tmp_path: Path) -> None:
    settings = Settings(job_user="nobody", worker_device="cpu")
    tmp_path.chmod(0o755)
    upload = tmp_path / "upload"
    upload.write_bytes(b"model bytes")
    upload.chmod(0o644)  # the worker makes the input readable to the job user
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    scratch = sandbox.scratch_dir(tmp_path, "job1", settings)
    assert (scratch.stat().st_uid, scratch.stat().st_mode & 0o777) == (65534, 0o700)
    script = (
        "id -u; id -G; cat ../../upload; echo; echo out > model.pt && echo wrote; "
        "echo x > ../../root-owned 2>/dev/null || echo denied; ls ../../private 2>/dev/null "
        "|| echo private-denied"
    )
    child = subprocess.run(["/bin/sh", "-c", script], cwd=scratch, capture_output=True,
                           text=True, preexec_fn=sandbox.preexec_limits(settings), check=True)
    assert child.stdout.split("\n")[:6] == [
        "65534", "65534", "model bytes", "wrote", "denied", "private-denied",
    ]
    assert (scratch / "model.pt").read_text() == "out\n"
    assert not (tmp_path / "root-owned").exists()
