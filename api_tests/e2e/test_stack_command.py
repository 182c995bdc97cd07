"""The README's run command, ``python -m stack``: it starts redis-server, a worker and the
API, says where the API listens, serves at once, and Ctrl-C stops everything it started."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api_tests.support.stacks import REPO_ROOT, mnist_root
from core.settings import Settings
from stack import processes as P

pytestmark = pytest.mark.e2e


def test_python_m_stack_starts_serves_and_stops(tmp_path: Path) -> None:
    redis_port, api_port = P.free_port(), P.free_port()
    env = Settings.of(data_dir=tmp_path / "data", mnist_root=mnist_root(),
                      redis_url=f"redis://127.0.0.1:{redis_port}/0", api_port=api_port,
                      janitor_interval_s=1).as_env()
    proc = subprocess.Popen([sys.executable, "-m", "stack"], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith(f"API listening on http://127.0.0.1:{api_port}"), banner
        base = f"http://127.0.0.1:{api_port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200, ready.text  # Redis up, storage writable, worker seen
        # First start: the local admin key, printed once and kept in data_dir (mode 0600).
        assert proc.stdout.readline().startswith("A local admin key was made")
        printed = proc.stdout.readline().strip()
        key_file = tmp_path / "data" / "admin.key"
        assert key_file.read_text().strip() == printed and printed.startswith("prn_live_")
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert httpx.get(f"{base}/v1/architectures").status_code == 401
        headers = {"Authorization": f"Bearer {printed}"}
        assert httpx.get(f"{base}/v1/architectures", headers=headers).status_code == 200
        assert (tmp_path / "data" / "redis").is_dir()  # Redis keeps its AOF under data_dir
        stack_children = P.children_of(proc.pid)
        assert len(stack_children) == 3  # redis-server, worker, API

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in stack_children):
            assert time.monotonic() < deadline, "a process the stack started outlived it"
            time.sleep(0.1)
        assert not P.redis_ping(env["PRUNER_REDIS_URL"])
        assert not P.http_ok(f"{base}/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
