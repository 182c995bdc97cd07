"""``python -m stack``: redis-server, the API and a Celery worker on this machine.

Data (job records, files, Redis's append-only file, logs) live under ``PRUNER_DATA_DIR``
(default ``var/data``); the API listens on ``PRUNER_API_HOST:PRUNER_API_PORT`` (default
127.0.0.1:8000); Redis on the port of ``PRUNER_REDIS_URL`` (default 6379; a Redis already
answering there is used as is). Ctrl-C stops everything.
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType
from urllib.parse import urlparse

from core.settings import get_settings
from stack.processes import (
    Proc,
    redis_ping,
    start_api,
    start_redis,
    start_worker,
    stop,
    wait_until_ready,
)


def main() -> int:
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    log_dir = data_dir / "logs"
    env = settings.as_env()
    started: list[Proc] = []
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if redis_ping(settings.redis_url):
            print(f"using the Redis already at {settings.redis_url}", flush=True)
        else:
            port = urlparse(settings.redis_url).port or 6379
            started.append(start_redis(port, data_dir / "redis", log_dir))
            wait_until_ready(started[-1])
        started.append(start_worker(env, "worker1", settings.queue_name, log_dir))
        started.append(start_api(env, settings.api_host, settings.api_port, log_dir))
        for proc in started[-2:]:
            wait_until_ready(proc, timeout=120)
        url = f"http://{settings.api_host}:{settings.api_port}"
        print(f"API listening on {url}  (docs: {url}/docs; logs: {log_dir}; Ctrl-C stops)",
              flush=True)
        while not stopping:
            dead = [p for p in started if not p.alive()]
            if dead:
                print(f"{dead[0].name} exited:\n{dead[0].log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        for proc in reversed(started):  # API first, Redis last
            stop(proc, timeout=30)


if __name__ == "__main__":
    sys.exit(main())
