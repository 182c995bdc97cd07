# The API image: FastAPI + Celery client only. No torch (the base install has none), so it is
# small and starts fast. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t pruning-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PRUNER_DATA_DIR=/data PRUNER_API_HOST=0.0.0.0 PRUNER_API_PORT=8000

WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY service ./service
COPY report_html ./report_html
# The base install (fastapi, uvicorn, celery[redis], pydantic...) and the PostgreSQL/S3
# drivers of the distributed profile; never torch.
RUN pip install '.[distributed]' \
    && useradd --system --uid 10001 --home-dir /app pruner \
    && mkdir -p /data && chown pruner /data
USER pruner

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# The same command `python -m stack` runs (stack/processes.py: start_api).
CMD ["python", "-m", "uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log", "--timeout-graceful-shutdown", "2"]
