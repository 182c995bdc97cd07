"""POST /v1/datasets with a ~200 MB dataset through a real uvicorn: wall time (streaming,
checks and record), the API's peak RSS, and the checker alone on the same file.

The file is 3 x 32 x 32 uint8 images (random pixels), int64 labels and uint8 splits, as
safetensors and as an (uncompressed) npz, written with numpy here. The multipart body is sent
from a generator in 1 MiB chunks, so the client never holds it whole either.

    .venv/bin/python -m benchmarks.dataset_upload [SIZE_MIB]      # prints JSON
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from core.datasets import check_dataset
from core.settings import Settings
from stack import processes as P

BOUNDARY = "benchmarkboundary7f3a"
CHUNK = 1 << 20


def write_files(folder: Path, size_mib: int) -> dict[str, Path]:
    n = size_mib * CHUNK // (3 * 32 * 32)
    rng = np.random.default_rng(0)
    arrays = {"images": rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8),
              "labels": rng.integers(0, 10, size=n, dtype=np.int64),
              "splits": (np.arange(n) % 10 == 0).astype(np.uint8) * 2}
    from safetensors.numpy import save_file

    paths = {"safetensors": folder / "big.safetensors", "npz": folder / "big.npz"}
    save_file(arrays, str(paths["safetensors"]))
    with paths["npz"].open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return paths


def body(path: Path) -> Iterator[bytes]:
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"dataset\"; "
           f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
           ).encode()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def upload(root: Path, env_extra: dict[str, str], path: Path) -> dict[str, Any]:
    env = {**os.environ, "PRUNER_DATA_DIR": str(root / "data"), **env_extra}
    port = P.free_port()
    proc = P._spawn("api", [sys.executable, "-m", "uvicorn", "service.main:app", "--port",
                            str(port), "--no-access-log"], root / "api.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        P.wait_until(lambda: P.http_ok(url + "/healthz"), "api", 60, proc)
        before = memory_kib(proc.pid)["VmRSS"]
        start = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            response = client.post(url + "/v1/datasets", content=body(path), headers={
                "content-type": f"multipart/form-data; boundary={BOUNDARY}"})
        seconds = time.perf_counter() - start
        after = memory_kib(proc.pid)
        size_mib = path.stat().st_size / CHUNK
        return {"status": response.status_code, "file_mib": round(size_mib, 1),
                "seconds": round(seconds, 2), "mib_per_s": round(size_mib / seconds, 1),
                "rss_before_mib": round(before / 1024, 1),
                "peak_rss_mib": round(after["VmHWM"] / 1024, 1),
                "peak_rss_growth_mib": round((after["VmHWM"] - before) / 1024, 1)}
    finally:
        P.stop(proc)


def check_alone(path: Path) -> float:
    start = time.perf_counter()
    check_dataset(path, Settings())
    return round(time.perf_counter() - start, 3)


def main() -> None:
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    root = Path(tempfile.mkdtemp(prefix="dataset-upload-"))
    redis = P.start_redis(P.free_port(), root / "redis", root / "logs")
    try:
        P.wait_until_ready(redis)
        files = write_files(root, size_mib)
        env = {"PRUNER_REDIS_URL": redis.meta["url"], "PRUNER_AUTH": "disabled"}
        results: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(),
                        "load_avg": [round(x, 1) for x in os.getloadavg()]},
        }
        for fmt, path in files.items():
            results[fmt] = {**upload(root / fmt, env, path), "check_alone_s": check_alone(path)}
        results["over_limit_64mib"] = upload(root / "limit", {
            **env, "PRUNER_MAX_DATASET_BYTES": str(64 * CHUNK)}, files["safetensors"])
        print(json.dumps(results, indent=2))
    finally:
        P.stop(redis)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
