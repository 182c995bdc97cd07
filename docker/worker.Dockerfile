# The worker image: Celery + the PyTorch engine. PyPI's torch wheels for Linux carry their own
# CUDA runtime, so a plain Python base runs on GPUs given the NVIDIA container toolkit (see
# the device reservation in docker-compose.yml) and falls back to CPU without one.
#   docker build -f docker/worker.Dockerfile -t pruning-worker .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PRUNER_DATA_DIR=/data PRUNER_MNIST_ROOT=/datasets PRUNER_QUEUE_NAME=prune

WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY worker ./worker
COPY service ./service
COPY report_html ./report_html
COPY stack ./stack
RUN pip install '.[worker,distributed]' \
    && useradd --system --uid 10001 --home-dir /app pruner \
    && mkdir -p /data && chown pruner /data
USER pruner

# Healthy while this worker's heartbeat key is in Redis (its janitor refreshes it).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import socket,sys,redis; from core.queue import heartbeat_key; from core.settings import get_settings; s=get_settings(); sys.exit(0 if redis.Redis.from_url(s.redis_url, socket_timeout=2).exists(heartbeat_key('worker1@' + socket.gethostname())) else 1)"]
# The same command `python -m stack` runs (stack/processes.py: start_worker): solo pool, one
# job at a time, prefetch 1; each job runs in a fresh child process.
CMD ["python", "-m", "celery", "-A", "worker.celery_app:app", "worker", "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1", "-Q", "prune", "-n", "worker1@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
