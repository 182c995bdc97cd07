"""``python -m stack``: redis-server, the API and a Celery worker on this machine.

Data (job records, files, Redis's append-only file, logs) live under ``PRUNER_DATA_DIR``
(default ``var/data``); the API listens on ``PRUNER_API_HOST:PRUNER_API_PORT`` (default
127.0.0.1:8000); Redis on the port of ``PRUNER_REDIS_URL`` (default 6379; a Redis already
answering there is used as is, and not supervised). A child that dies is restarted with
backoff while the others keep serving (stack/keeper.py). Ctrl-C or SIGTERM stops everything
within 10 s; a running job goes back to the queue for the next start.
"""

from __future__ import annotations

import signal
import sys
import time
from functools import partial
from types import FrameType
from urllib.parse import urlparse

from core.settings import Settings, get_settings
from core.tenants.tenancy import ADMIN_KEY_FILE, local_admin_key
from stack.keeper import Keeper, say
from stack.processes import redis_ping, start_api, start_redis, start_worker, wait_until_ready

POLL_S = 0.25


def start_children(keeper: Keeper, settings: Settings) -> None:
    data_dir = settings.data_dir.resolve()
    log_dir = data_dir / "logs"
    env = settings.as_env()
    if redis_ping(settings.redis_url):
        say(f"using the Redis already at {settings.redis_url}")
    else:
        port = urlparse(settings.redis_url).port or 6379
        wait_until_ready(keeper.add(partial(start_redis, port, data_dir / "redis", log_dir)))
    worker = keeper.add(partial(start_worker, env, "worker1", settings.queue_name, log_dir))
    api = keeper.add(partial(start_api, env, settings.api_host, settings.api_port, log_dir))
    for proc in (worker, api):
        wait_until_ready(proc, timeout=120)
    url = f"http://{settings.api_host}:{settings.api_port}"
    print(f"API listening on {url}  (docs: {url}/docs; logs: {log_dir}; Ctrl-C stops)",
          flush=True)
    if settings.auth == "disabled":
        print("auth is disabled (PRUNER_AUTH=disabled): anyone who reaches the port can "
              "read and submit every job", flush=True)
        return
    key, new = local_admin_key(settings)
    where = data_dir / ADMIN_KEY_FILE
    if new:
        print(f"A local admin key was made (kept in {where}, mode 0600):\n  {key}\n"
              f"  export KEY=$(cat {where}); curl -H \"Authorization: Bearer $KEY\" "
              f"{url}/v1/jobs", flush=True)
    else:
        print(f"Local admin key: {where} (export KEY=$(cat {where}))", flush=True)


def main() -> int:
    settings = get_settings()
    keeper = Keeper()
    stopping: list[int] = []
    serving = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        if not serving:  # still starting: leave the wait for readiness at once
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        start_children(keeper, settings)
        serving = True
        while not stopping:
            keeper.check()
            time.sleep(POLL_S)
        say(f"{signal.Signals(stopping[0]).name}: stopping (a running job goes back to the "
            "queue)")
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        keeper.stop()


if __name__ == "__main__":
    sys.exit(main())
