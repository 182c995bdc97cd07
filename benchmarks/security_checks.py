"""What the hostile-upload checks cost, against loading the same file, in the same run.

    .venv/bin/python -m benchmarks.security_checks      # prints JSON

For a ~100 MB state_dict (25M float32 elements in 4 tensors), a safetensors file of the same
tensors, and the scripted small_cnn_bn / mnist_mlp registry models:

- ``door_s``: ``core.uploads.check_upload`` (zip central directory + pickle opcodes, or
  the safetensors header): what the API runs per upload;
- ``load_s``: the load the worker does anyway (``torch.load(weights_only=True)``,
  ``safetensors.torch.load_file``, ``torch.jit.load``) — the reference;
- ``audit_s``: ``check_tensors`` (dtype, NaN/Inf, caps) and, for TorchScript,
  ``audit_torchscript``.

Medians of 5 rounds. Goal: the door check is a small fraction of the load (it never reads the
tensor data), and the audits cost less than the load.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from benchmarks.api_latency import machine
from core.settings import Settings
from core.uploads import check_upload
from worker.engine import registry, scripting
from worker.engine.audit import audit_torchscript, check_tensors

ROUNDS = 5


def median_s(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(path: Path, load: Callable[[], Any], audit: Callable[[Any], None],
            settings: Settings) -> dict[str, Any]:
    loaded = load()
    door, load_s = median_s(lambda: check_upload(path, settings)), median_s(load)
    audit_s = median_s(lambda: audit(loaded))
    return {"bytes": path.stat().st_size, "door_s": round(door, 5), "load_s": round(load_s, 5),
            "audit_s": round(audit_s, 5), "door_over_load": round(door / load_s, 4)}


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    settings = Settings()
    torch.manual_seed(0)
    tensors = {f"layer{i}.weight": torch.randn(2500, 2500) for i in range(4)}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sd = Path(tmp) / "sd.pt"
        torch.save(tensors, sd)
        results["state_dict_100MB"] = measure(
            sd, lambda: torch.load(sd, weights_only=True, mmap=False),
            lambda t: check_tensors(t, settings), settings)
        st = Path(tmp) / "m.safetensors"
        save_file(tensors, str(st))
        results["safetensors_100MB"] = measure(
            st, lambda: load_file(str(st)), lambda t: check_tensors(t, settings), settings)
        for name in ("mnist_mlp", "small_cnn_bn"):
            ts = Path(tmp) / f"{name}.pt"
            torch.jit.save(scripting.script(registry.build(name)), str(ts))

            def audit_all(m: Any) -> None:
                audit_torchscript(m)
                check_tensors(dict(m.state_dict()), settings)

            results[f"torchscript_{name}"] = measure(
                ts, lambda ts=ts: torch.jit.load(str(ts)), audit_all, settings)
    print(json.dumps({"benchmark": "security_checks", "machine": machine(),
                      "torch": torch.__version__, "rounds": ROUNDS, "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
