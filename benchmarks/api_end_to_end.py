"""The reference recipe through the API, end to end, vs the same spec run by the engine
in-process, in the same run.

    .venv/bin/python -m benchmarks.api_end_to_end [ROUNDS]      # prints JSON

Model: the 784-256-128-10 MLP (state_dict, ``architecture: mnist_mlp``) trained one epoch
here; spec: ``core.jobs.spec.REFERENCE_RECIPE`` (30% global L1, fine-tune 2 epochs with Adam, lr
1e-3, batch 64), on the CPU.

- ``in_process``: a fresh Python that has already imported torch calls ``run_job`` once and
  times only that call (MNIST is read inside it, as in a job): the script a user would write,
  minus interpreter start-up. A fresh process per round, so no round reuses another's caches.
- ``through_api``: POST /v1/jobs on a local stack (redis-server, uvicorn, one worker), poll
  GET /v1/jobs/{id} every 0.1 s until ``succeeded``, then download the report and the model.
  It includes the upload, the queue, the progress writes and the download. Each job is
  submitted once the worker's standby job process is warm (its log line), as on a worker
  that was idle for a few seconds; the worker runs with the default ``worker_device``
  (``auto``: the CPU here).
- ``data_phase_s``: the report's ``data`` timing (MNIST on the device, normalised). Target
  through the API with a warm standby: <= 0.3 s (the standby read MNIST before the job came).

Rounds alternate between the two; the ratio is of the medians. Target: <= 1.3x. (The API can
come out ahead: the worker's standby job process imports torchvision and reads MNIST before
the job arrives, which a cold script pays inside ``run_job``.)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.api_latency import machine
from core.jobs.spec import REFERENCE_RECIPE
from stack.local import Stack, local_stack
from worker.job_process import STANDBY_READY

TARGET_RATIO = 1.3
TARGET_DATA_PHASE_S = 0.3

IN_PROCESS = """
import json, sys, time
from pathlib import Path
import torch
from core.settings import Settings
from core.jobs.spec import JobSpec
from worker.engine.pipeline import run_job
model, spec, out, mnist = sys.argv[1:5]
settings = Settings(mnist_root=Path(mnist), worker_device="cpu")
start = time.perf_counter()
result = run_job(Path(model), JobSpec.model_validate_json(spec), Path(out), settings=settings)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "accuracy": result.report.accuracy.after_finetune.accuracy,
                  "data_phase_s": result.report.timings_s["data"]}))
"""


def trained_state_dict(folder: Path, mnist: Path) -> Path:
    import torch
    from torchvision.datasets import MNIST

    from worker.engine.registry import build

    torch.manual_seed(0)
    model = build("mnist_mlp")
    data = MNIST(str(mnist), train=True, download=False)
    images = data.data.unsqueeze(1).float().div_(255).sub_(0.1307).div_(0.3081)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for batch in torch.randperm(len(images)).split(64):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images[batch]), data.targets[batch]).backward()
        optimizer.step()
    path = folder / "mlp.state_dict.pt"
    torch.save(model.state_dict(), path)
    return path


def in_process(model: Path, out: Path, mnist: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(model), REFERENCE_RECIPE.model_dump_json(),
         str(out), str(mnist)],
        check=True, capture_output=True, text=True,
    )
    parsed: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def wait_for_standby(stack: Stack, jobs_run: int, timeout: float = 120.0) -> None:
    """Until the worker's standby for the next job has logged that it is warm."""
    deadline = time.monotonic() + timeout
    while stack.worker.log_path.read_text(errors="replace").count(STANDBY_READY) <= jobs_run:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no warm standby after {timeout} s:\n{stack.logs()}")
        time.sleep(0.2)


def through_api(client: httpx.Client, model: Path) -> dict[str, float]:
    start = time.perf_counter()
    with model.open("rb") as f:
        response = client.post("/v1/jobs", files={"model": (model.name, f)},
                               data={"spec": REFERENCE_RECIPE.model_dump_json()})
    response.raise_for_status()
    job_id = response.json()["id"]
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        time.sleep(0.1)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job ended {job['status']}: {job['error']}")
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    client.get(f"/v1/jobs/{job_id}/model").raise_for_status()
    return {"seconds": time.perf_counter() - start,
            "accuracy": report["accuracy"]["after_finetune"]["accuracy"],
            "engine_total_s": report["timings_s"].get("total", float("nan")),
            "data_phase_s": report["timings_s"]["data"]}


def main(rounds: int = 2) -> dict[str, Any]:
    mnist = Path(os.environ.get("PRUNER_MNIST_ROOT", "../shared/datasets")).resolve()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = trained_state_dict(tmp, mnist)
        local: list[dict[str, float]] = []
        api: list[dict[str, float]] = []
        with local_stack(tmp / "stack", {"mnist_root": mnist}) as stack:
            for n in range(rounds):
                local.append(in_process(model, tmp / f"out{n}", mnist))
                wait_for_standby(stack, jobs_run=n)
                api.append(through_api(stack.client, model))
    local_s = statistics.median(r["seconds"] for r in local)
    api_s = statistics.median(r["seconds"] for r in api)
    data_s = max(r["data_phase_s"] for r in api)
    return {
        "benchmark": "api_end_to_end",
        "machine": machine(),
        "spec": json.loads(REFERENCE_RECIPE.model_dump_json()),
        "rounds": rounds,
        "in_process_s": [round(r["seconds"], 2) for r in local],
        "through_api_s": [round(r["seconds"], 2) for r in api],
        "engine_total_in_job_s": [round(r["engine_total_s"], 2) for r in api],
        "data_phase_in_process_s": [round(r["data_phase_s"], 3) for r in local],
        "data_phase_through_api_s": [round(r["data_phase_s"], 3) for r in api],
        "accuracy_in_process": [round(r["accuracy"], 4) for r in local],
        "accuracy_through_api": [round(r["accuracy"], 4) for r in api],
        "median_in_process_s": round(local_s, 2),
        "median_through_api_s": round(api_s, 2),
        "ratio": round(api_s / local_s, 3),
        "note": "through_api includes upload, queue, polling and download, but the job process "
        "was started ahead of the job (standby: Python, torch, torchvision and the engine "
        "imported and MNIST read into CPU memory while idle, worker_device auto); in_process "
        "pays the torchvision import and the MNIST read inside run_job. The machine is shared "
        "with other agents' builds and tests: figures from a loaded 2-core machine.",
        "target_ratio": TARGET_RATIO,
        "meets_target": api_s / local_s <= TARGET_RATIO,
        "target_data_phase_s": TARGET_DATA_PHASE_S,
        "meets_data_phase_target": data_s <= TARGET_DATA_PHASE_S,
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2), indent=2))
