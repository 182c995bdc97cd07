"""``python -m stack.gpu_workers --gpus N``: one Celery worker per GPU of this host, each
pinned to its device (``PRUNER_WORKER_DEVICE=cuda:i``), started and stopped together.

The one command a GPU host runs (the compose file's ``worker-gpus`` service does): with
PostgreSQL and S3 (``PRUNER_DATABASE_URL``, ``PRUNER_BLOB_URL``) the host shares nothing with
the API, so adding a GPU box is running this there. Worker ``i`` is named ``gpu<i>@<host>``
and gets its own scratch (``<data_dir>/gpu<i>``). Its output goes to this process's stdout
(the container log). SIGTERM/SIGINT are passed on (Celery's warm shutdown: the running job
finishes or goes back to the queue); if one worker exits, the others are stopped and the
command exits non-zero so the supervisor (Docker's restart policy, systemd) restarts the set.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from core.settings import Settings, get_settings
from stack.processes import worker_args


def worker_envs(settings: Settings, gpus: int) -> list[tuple[str, dict[str, str]]]:
    """(Celery hostname, environment) of each worker: device ``cuda:i``, scratch of its own."""
    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, got {gpus}")
    host = socket.gethostname()
    return [
        (f"gpu{i}@{host}", settings.model_copy(update={
            "worker_device": f"cuda:{i}", "data_dir": settings.data_dir / f"gpu{i}",
        }).as_env())
        for i in range(gpus)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, required=True, help="workers to start: cuda:0..N-1")
    args = parser.parse_args(argv)
    settings = get_settings()
    procs = [subprocess.Popen(worker_args(name, settings.queue_name), env=env)
             for name, env in worker_envs(settings, args.gpus)]
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(1)
    if not stopping:  # one died: stop the set, let the supervisor restart it
        forward(signal.SIGTERM, None)
    codes = [p.wait() for p in procs]
    return 0 if stopping and not any(codes) else 1


if __name__ == "__main__":
    sys.exit(main())
