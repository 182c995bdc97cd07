"""The README's run command, ``python -m stack``: it starts redis-server, a worker and the
API, says where the API listens, serves at once, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api_tests.conftest import REPO_ROOT, mnist_root
from stack import processes as P

pytestmark = pytest.mark.e2e


def test_python_m_stack_starts_serves_and_stops(tmp_path: Path) -> None:
    redis_port, api_port = P.free_port(), P.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNER_")}
    env.update(PRUNER_DATA_DIR=str(tmp_path / "data"), PRUNER_MNIST_ROOT=str(mnist_root()),
               PRUNER_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
               PRUNER_API_PORT=str(api_port), PRUNER_JANITOR_INTERVAL_S="1",
               PYTHONUNBUFFERED="1")
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
        assert httpx.get(f"{base}/v1/architectures").status_code == 200
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
