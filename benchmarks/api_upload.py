"""Upload path of POST /v1/jobs: our streaming parser vs starlette's form parser, same run.

Both servers are real uvicorn processes receiving the same chunked multipart body (a
``model`` file of SIZE_MIB and a ``spec`` field). Measured per server: wall time,
peak RSS (VmHWM), RSS before, and the bytes it wrote (spool files included). Then the limit
case: the same upload against a 64 MiB limit, and how long until the 413.

    .venv/bin/python -m benchmarks.api_upload [SIZE_MIB]      # prints JSON

The reference (``reference_app``) is what a FastAPI route with ``UploadFile`` does:
``await request.form()`` spools the file part to a SpooledTemporaryFile (on disk past 1
MiB), then the route copies it to the job folder.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from starlette.datastructures import UploadFile

from stack import processes as P
from testkit.uploads import (
    BOUNDARY,
    CHUNK,
    memory_kib,
    multipart_body,
    written_bytes,
)

reference_app = FastAPI()


@reference_app.post("/v1/jobs")
async def reference_upload(request: Request) -> dict[str, int]:
    form = await request.form(max_part_size=64 * CHUNK)
    upload = form["model"]
    assert isinstance(upload, UploadFile)
    target = Path(os.environ["PRUNER_DATA_DIR"]) / "upload"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        while chunk := await upload.read(CHUNK):
            out.write(chunk)
    return {"bytes": target.stat().st_size}


@reference_app.get("/healthz")
def reference_health() -> dict[str, str]:
    return {"status": "ok"}


def post(url: str, size_mib: int) -> tuple[int, float]:
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    start = time.perf_counter()
    try:
        with httpx.Client(timeout=600) as client:
            response = client.post(url + "/v1/jobs", content=multipart_body(size_mib),
                                   headers=headers)
        status = response.status_code
    except httpx.HTTPError:  # the server answered early and closed while we were sending
        status = -1
    return status, time.perf_counter() - start


def run_server(app: str, root: Path, env_extra: dict[str, str], size_mib: int) -> dict[str, Any]:
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PRUNER_DATA_DIR": str(root / "data"),
           **env_extra}
    port = P.free_port()
    proc = P._spawn(app, [sys.executable, "-m", "uvicorn", app, "--port", str(port),
                          "--no-access-log"], root / "server.log", env)
    proc.meta["url"] = f"http://127.0.0.1:{port}"
    try:
        P.wait_until(lambda: P.http_ok(proc.meta["url"] + "/healthz"), app, 60, proc)
        before, wrote_before = memory_kib(proc.pid)["VmRSS"], written_bytes(proc.pid)
        status, seconds = post(proc.meta["url"], size_mib)
        after, wrote = memory_kib(proc.pid), written_bytes(proc.pid) - wrote_before
        return {"status": status, "seconds": round(seconds, 2),
                "mib_per_s": round(size_mib / seconds, 1),
                "rss_before_mib": round(before / 1024, 1),
                "peak_rss_mib": round(after["VmHWM"] / 1024, 1),
                "peak_rss_growth_mib": round((after["VmHWM"] - before) / 1024, 1),
                "written_mib": round(wrote / CHUNK, 1)}
    finally:
        P.stop(proc)


def main() -> None:
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    root = Path(tempfile.mkdtemp(prefix="api-upload-"))
    redis = P.start_redis(P.free_port(), root / "redis", root / "logs")
    try:
        P.wait_until_ready(redis)
        # The upload path is what is measured: no key lookup in front of it.
        ours_env = {"PRUNER_REDIS_URL": redis.meta["url"], "PRUNER_AUTH": "disabled",
                    "PRUNER_MAX_UPLOAD_BYTES": str((size_mib + 1) * CHUNK)}
        results = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "upload_mib": size_mib,
            "ours": run_server("service.main:app", root / "ours", ours_env, size_mib),
            "reference_starlette_form": run_server("benchmarks.api_upload:reference_app",
                                                   root / "reference", {}, size_mib),
            "ours_over_64mib_limit": run_server(
                "service.main:app", root / "limit",
                {**ours_env, "PRUNER_MAX_UPLOAD_BYTES": str(64 * CHUNK)}, size_mib),
        }
        print(json.dumps(results, indent=2))
    finally:
        P.stop(redis)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
