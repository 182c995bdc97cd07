"""A whole local stack in one object: redis-server, the API and workers on free ports.

Used by the test fixtures (api_tests/conftest.py) and the benchmarks; ``python -m stack`` uses
the same process functions (stack/processes.py).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.settings import Settings
from core.tenants.tenancy import local_admin_key
from stack import processes as P


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    settings: Settings
    redis: P.Proc
    api: P.Proc
    worker: P.Proc
    base_url: str
    client: httpx.Client
    workers_started: int = 1
    extra: list[P.Proc] = field(default_factory=list)
    api_key: str = ""  # the local admin key (tenant ``local``); ``client`` sends it

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def restart_api(self) -> None:
        P.stop(self.api)
        self.api = P.start_api(self.env, "127.0.0.1", self.settings.api_port, self.log_dir)
        P.wait_until_ready(self.api)

    def start_worker(self) -> P.Proc:
        self.workers_started += 1
        proc = P.start_worker(self.env, f"w{self.workers_started}", self.settings.queue_name,
                              self.log_dir)
        P.wait_until_ready(proc, timeout=90)
        return proc

    def restart_worker(self, kill: bool = False) -> None:
        (P.kill if kill else P.stop)(self.worker)
        self.worker = self.start_worker()

    def restart_redis(self, wipe: bool = False) -> None:
        """Stop Redis (SIGTERM: it fsyncs its append-only file), optionally wipe its data
        ("a Redis that lost everything"), and start it again on the same port."""
        P.stop(self.redis)
        redis_dir = self.root / "redis"
        if wipe:
            for entry in redis_dir.rglob("*"):
                if entry.is_file():
                    entry.unlink()
        self.redis = P.start_redis(self.redis_port, redis_dir, self.log_dir)
        P.wait_until_ready(self.redis)

    @property
    def redis_port(self) -> int:
        return int(self.settings.redis_url.rsplit(":", 1)[1].split("/")[0])

    def job_processes(self, job_id: str | None = None) -> list[int]:
        """Pids of the worker's job processes (of ``job_id`` only, when given)."""
        pids = P.children_of(self.worker.pid)
        if job_id is None:
            return pids
        return [pid for pid in pids if _cwd(pid).endswith(f"/scratch/{job_id}")
                or job_id.encode() in _cmdline(pid)]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(60)}"
                         for p in (self.redis, self.api, self.worker, *self.extra))

    def stop(self) -> None:
        self.client.close()
        for proc in (self.api, self.worker, *self.extra, self.redis):
            P.stop(proc, timeout=20)


def _cwd(pid: int) -> str:
    """A job process works in its job's scratch dir (a standby moves there when assigned)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def host_env(settings: Settings, root: Path, host: str, own_dirs: bool) -> dict[str, str]:
    """A process's environment; with ``own_dirs`` its data_dir is its own ("another host":
    with PostgreSQL and S3 nothing else is shared)."""
    if not own_dirs:
        return settings.as_env()
    return settings.model_copy(update={"data_dir": root / "hosts" / host}).as_env()


@contextmanager
def local_stack(root: Path, values: dict[str, Any], workers: int = 1,
                own_data_dirs: bool = False) -> Iterator[Stack]:
    """Start redis-server, ``workers`` Celery workers and the API under ``root`` with the
    given settings (Settings field names; data_dir, redis_url and api_port are filled in);
    stop them all on exit. ``own_data_dirs``: each process gets a data_dir of its own, as on
    separate hosts (for the PostgreSQL + S3 backends)."""
    redis_port, api_port = P.free_port(), P.free_port()
    values = {"data_dir": root / "data", "redis_url": f"redis://127.0.0.1:{redis_port}/0",
              "api_port": api_port, **values}
    if own_data_dirs and not values.get("auth_pepper"):  # hosts share no data dir
        values["auth_pepper"] = secrets.token_urlsafe(32)
    settings = Settings.of(**values)
    env = settings.as_env()
    api_key, _ = local_admin_key(settings)  # made on the first start (core/tenants/tenancy.py)
    log_dir = root / "logs"
    started = [P.start_redis(redis_port, root / "redis", log_dir)]
    try:
        P.wait_until_ready(started[0])
        for n in range(1, workers + 1):
            started.append(P.start_worker(host_env(settings, root, f"w{n}", own_data_dirs),
                                          f"w{n}", settings.queue_name, log_dir))
        started.append(P.start_api(host_env(settings, root, "api", own_data_dirs),
                                   "127.0.0.1", api_port, log_dir))
        for proc in started[1:]:
            P.wait_until_ready(proc, timeout=120)
    except BaseException:
        for proc in reversed(started):
            P.stop(proc, timeout=5)
        raise
    redis, worker, *extra, api = started
    stack = Stack(root, env, settings, redis, api, worker, api.meta["url"],
                  httpx.Client(base_url=api.meta["url"], timeout=30,
                               headers={"Authorization": f"Bearer {api_key}"}),
                  workers_started=workers, extra=extra, api_key=api_key)
    try:
        yield stack
    finally:
        stack.stop()
