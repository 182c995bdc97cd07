"""Physical channel removal (pruning.shrink), measured against the dense model in one run.

1. Registry lenet5: a dense LeNet-5 trained 3 epochs (the baseline), then a shrink job
   through ``run_job`` (ln_structured L2, 50% of conv1/conv2 filters, fc1's inputs follow,
   2 epochs of fine-tuning on the shrunk model). Targets: test accuracy <= 0.5 points below
   dense; >= 1.5x faster at batch 256 on this CPU (dense and shrunk timed interleaved in the
   same process, TorchScript files as downloaded); >= 45% fewer FLOPs per image
   (torch.utils.flop_counter.FlopCounterMode).
2. A BatchNorm + residual CNN (stem conv+BN, two residual blocks, linear head;
   ``testkit.models.ResidualNet``, which the tests build too), trained 1 epoch, uploaded as
   scripted and as traced TorchScript,
   shrunk at 50% with 1 epoch of fine-tuning: the downloaded archive's accuracy and shapes
   must equal the report's.

    PRUNER_MNIST_ROOT=../shared/datasets .venv/bin/python -m benchmarks.shrink \
        [--out benchmarks/results/shrink_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.engine_finetune import machine
from core.jobs.spec import FinetuneSpec, InputSpec, JobSpec
from core.settings import get_settings
from testkit.models import ResidualNet
from worker.engine import data, registry, scripting, training
from worker.engine.pipeline import RunResult, run_job

CPU = torch.device("cpu")


def train_dense(model: nn.Module, epochs: int, *, input_spec: InputSpec | None = None,
                seed: int = 0, lr_schedule: Literal["constant", "cosine"] = "constant",
                images: int | None = None) -> nn.Module:
    """``epochs`` on all 60000 MNIST train images (``images``: the first that many), fed as
    a job feeds them (``input_spec``: the job's ``input`` block, through the engine's own
    loader), Adam at 1e-3, batch 128."""
    train = data.load_split(get_settings().mnist_root, True, CPU, input_spec or InputSpec())
    if images is not None:
        train = data.Split(train.images[:images], train.labels[:images])
    training.finetune(model, train, FinetuneSpec(epochs=epochs, batch_size=128,
                                                 lr_schedule=lr_schedule),
                      training.MaskHold([], []), seed=seed)
    return model.eval()


def test_accuracy(model: nn.Module, input_spec: InputSpec | None = None) -> float:
    test = data.load_split(get_settings().mnist_root, False, CPU, input_spec or InputSpec())
    return training.evaluate(model, test).accuracy


def flops_per_image(model: nn.Module) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    return int(counter.get_total_flops())


def latency_ms(models: dict[str, nn.Module], batch: int, runs: int = 100) -> dict[str, Any]:
    """Warm-up, then ``runs`` forward passes per model, interleaved so that both see the
    same machine load. Wall-clock p50/p90/min in milliseconds, and the process CPU time per
    pass (p50): on a shared, overloaded CPU the wall clock also counts time spent waiting for
    a core, the CPU time only the work done."""
    x = torch.randn(batch, 1, 28, 28)
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            for _ in range(5):
                model(x)
        for _ in range(runs):
            for name, model in models.items():
                c0, t0 = time.process_time(), time.perf_counter()
                model(x)
                wall[name].append((time.perf_counter() - t0) * 1000)
                cpu[name].append((time.process_time() - c0) * 1000)
    return {name: {"p50": statistics.median(t), "p90": statistics.quantiles(t, n=10)[-1],
                   "min": min(t), "cpu_p50": statistics.median(cpu[name])}
            for name, t in wall.items()}


def speedups(lat: dict[str, Any]) -> dict[str, float]:
    return {key: lat["dense"][key] / lat["shrunk"][key] for key in ("p50", "min", "cpu_p50")}


def shrink_job(path: Path, spec: dict[str, Any], out: Path) -> RunResult:
    return run_job(path, JobSpec.model_validate(spec), out, settings=get_settings())


def lenet5(workdir: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    dense = train_dense(registry.build("lenet5"), epochs=3)
    dense_accuracy = test_accuracy(dense)
    path = workdir / "lenet5.pt"
    torch.save(dense.state_dict(), path)
    t0 = time.perf_counter()
    result = shrink_job(path, {
        "architecture": "lenet5", "device": "cpu",
        "pruning": {"method": "ln_structured", "n": 2, "dim": 0, "amount": 0.5,
                    "shrink": True, "include": ["conv1.weight", "conv2.weight"]},
        "finetune": {"epochs": 2, "batch_size": 128},
    }, workdir / "lenet5-out")
    job_s = time.perf_counter() - t0
    shrunk = torch.jit.load(str(result.outputs["torchscript"])).eval()
    dense_script = scripting.script(dense).eval()
    lat = latency_ms({"dense": dense_script, "shrunk": shrunk}, batch=256)
    lat1 = latency_ms({"dense": dense_script, "shrunk": shrunk}, batch=1, runs=300)
    flops = {"dense": flops_per_image(dense), "shrunk": flops_per_image(shrunk)}
    after = result.report.accuracy.after_finetune.accuracy
    assert result.report.shrink is not None
    return {
        "widths": result.report.shrink.widths,
        "parameters": {"dense": result.report.shrink.parameters_before,
                       "shrunk": result.report.shrink.parameters_after},
        "accuracy": {"split": "test", "dense": dense_accuracy,
                     "after_removal": result.report.accuracy.after_pruning.accuracy,
                     "after_finetune": after, "points_below_dense": (dense_accuracy - after) * 100},
        "flops_per_image": {**flops, "reduction": 1 - flops["shrunk"] / flops["dense"]},
        "latency_ms_batch_256": lat, "latency_ms_batch_1": lat1,
        "speedup_batch_256": speedups(lat), "speedup_batch_1": speedups(lat1),
        "job_seconds": job_s, "timings_s": result.report.timings_s,
        # What the job's own report measured (report.cost), beside this script's timing.
        "report_cost": (None if result.report.cost is None
                        else result.report.cost.model_dump(mode="json")),
        "targets_met": {
            "accuracy_within_0.5_points": (dense_accuracy - after) * 100 <= 0.5,
            "speedup_batch_256_at_least_1.5 (wall p50)": speedups(lat)["p50"] >= 1.5,
            "flops_at_least_45_percent_fewer": 1 - flops["shrunk"] / flops["dense"] >= 0.45,
        },
    }


def residual(workdir: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    dense = train_dense(ResidualNet(), epochs=1)
    results: dict[str, Any] = {"dense_accuracy": test_accuracy(dense)}
    for kind in ("scripted", "traced"):
        module = (scripting.script(dense) if kind == "scripted"
                  else torch.jit.trace(dense, torch.zeros(2, 1, 28, 28)))
        path = workdir / f"residual-{kind}.pt"
        torch.jit.save(module, str(path))
        result = shrink_job(path, {
            "device": "cpu", "finetune": {"epochs": 1, "batch_size": 128},
            "pruning": {"method": "ln_structured", "dim": 0, "amount": 0.5, "shrink": True},
        }, workdir / f"residual-{kind}-out")
        report = result.report
        assert report.shrink is not None
        downloaded = torch.jit.load(str(result.outputs["torchscript"])).eval()
        shapes = {k: list(v.shape) for k, v in downloaded.state_dict().items()}
        measured = test_accuracy(downloaded)
        results[kind] = {
            "widths": report.shrink.widths,
            "coupled_group": next(g.producers for g in report.shrink.groups
                                  if "stem" in g.producers),
            "parameters": {"dense": report.shrink.parameters_before,
                           "shrunk": report.shrink.parameters_after},
            "accuracy": {"split": "test", "before": report.accuracy.before.accuracy,
                         "after_removal": report.accuracy.after_pruning.accuracy,
                         "after_finetune": report.accuracy.after_finetune.accuracy,
                         "downloaded_file": measured},
            "downloaded_accuracy_equals_report":
                abs(measured - report.accuracy.after_finetune.accuracy) < 1e-4,
            "downloaded_shapes_equal_report": all(
                shapes[c.name] == c.shape_after for c in report.shrink.tensors),
        }
    return results


def main() -> None:
    if "OMP_WAIT_POLICY" not in os.environ:  # as in a job process
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    warnings.simplefilter("ignore", FutureWarning)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "shrink", "machine": machine(CPU)}
    result["machine"]["note"] = ("2-core CPU VM that other work may share (see the load "
                                 "averages): absolute times are noisy; dense and shrunk are "
                                 "timed interleaved in one process")
    result["gpu"] = ("not measured: no GPU machine was lent to this session "
                     "(device tool: not drawn)")
    with tempfile.TemporaryDirectory() as tmp:
        result["lenet5"] = lenet5(Path(tmp))
        result["residual_cnn"] = residual(Path(tmp))
    result["machine"]["load_average_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
