"""Compress to a target (``spec.target``), measured in one run on this machine.

LeNet-5 (registry ``lenet5``), dense, trained here on all 60000 MNIST train images (as teams
train theirs; Adam, lr 1e-3, batch 128, ``--dense-epochs``), then one job through
``run_job``: ``{"flops": {"max_ratio": 0.4}, "max_accuracy_drop": 0.003}`` with 4 trials of
12000-image short fine-tunes and a 2-epoch fine-tune of the chosen one (Adam, lr 1e-3, cosine,
batch 128, distilled from the dense upload). Target: FLOPs <= 40% of dense at <= 0.3 point
drop, judged on validation (the even-indexed half of the MNIST test split); the test figure
(odd half) is reported beside it. The uniform allocation at the same bound is one of the
trials (the reference: same short fine-tune). Wall time and trial count per row.

``--rows lenet300``: per seed (``--seeds``, default the fresh 20 21 22) a dense LeNet-300-100
trained here, then one job with ``{"bytes": {"max": 30000, "format": "compressed"},
"max_accuracy_drop": 0.003}``: unstructured sparsity x k-means bits (``target_bits``), 8
trials (``search.max_trials``), the chosen one pruned by AGP over a 10-epoch distilled
fine-tune, then 2 epochs of centroid fine-tuning. Each row: the download's bytes (the file
itself) and the drop on validation (even test half) and test (odd half).

``--rows resnet18``: torchvision's ResNet-18 (``num_classes=10``) trained dense on all 60000
MNIST train images fed as the job feeds them (3 x 32 x 32; ``--resnet18-model`` takes one
already trained, e.g. by ``benchmarks.zoo_finetune``, else ``zoo_finetune.dense_upload``
trains it), scripted, then one job with ``{"latency_ms": {"max_ratio": 0.5, "batch": 64},
"max_accuracy_drop": 0.005}`` over every Conv2d (the head not targeted): ">= 2x faster at
batch 64 on this CPU with <= 0.5 point drop". The uniform allocation at the same bound is one
of the trials (same short fine-tune): the row compares the chosen one's validation accuracy
with it.

    PRUNER_MNIST_ROOT=../shared/datasets .venv/bin/python -m benchmarks.targets \
        [--out benchmarks/results/targets_cpu.json]
    PRUNER_MNIST_ROOT=../shared/datasets .venv/bin/python -m benchmarks.targets \
        --rows lenet300 --out benchmarks/results/targets_lenet300_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.engine_finetune import machine
from benchmarks.zoo_finetune import INPUT, dense_upload, load
from benchmarks.zoo_shrink import conv_weights
from core.jobs.formats import ModelFormat
from core.jobs.spec import FinetuneSpec, InputSpec, JobSpec
from core.settings import get_settings
from worker.engine import data, registry, training
from worker.engine.errors import EngineError
from worker.engine.pipeline import run_job

CPU = torch.device("cpu")
ROW = "lenet5: FLOPs <= 40% of dense at <= 0.3 point drop (validation)"


def lenet5_flops(args: argparse.Namespace, folder: Path, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = registry.build("lenet5")
    started = time.perf_counter()
    train = data.load_split(get_settings().mnist_root, True, CPU, InputSpec())
    training.finetune(model, train, FinetuneSpec(epochs=args.dense_epochs, batch_size=128),
                      training.MaskHold([], []), seed=seed)
    dense_s = time.perf_counter() - started
    path = folder / f"lenet5-{seed}.pt"
    torch.save(model.state_dict(), path)
    spec = JobSpec.model_validate({
        "architecture": "lenet5", "device": "cpu", "seed": seed,
        "finetune": {"epochs": args.epochs, "batch_size": 128, "lr": 1e-3,
                     "lr_schedule": "cosine", "distill": {}},
        "target": {"flops": {"max_ratio": 0.4}, "max_accuracy_drop": 0.003,
                   "max_trials": args.trials, "trial_images": args.trial_images}})
    started = time.perf_counter()
    try:
        report = run_job(path, spec, folder / f"out-lenet5-{seed}", settings=get_settings()).report
    except EngineError as exc:  # target_unreachable: the row says so, with the frontier
        return {"row": ROW, "seed": seed, "met": False, "error": exc.message,
                "frontier": exc.report, "dense_training_s": round(dense_s, 1),
                "job_wall_s": round(time.perf_counter() - started, 1)}
    wall = time.perf_counter() - started
    target = report.target
    assert target is not None and target.chosen is not None and report.cost is not None
    validation = report.accuracy.validation
    assert validation is not None
    drop = validation.before.accuracy - validation.after_finetune.accuracy
    return {
        "row": ROW, "seed": seed,
        "dense_training_s": round(dense_s, 1), "job_wall_s": round(wall, 1),
        "trials": len(target.trials), "spec": spec.model_dump(mode="json"),
        "flops_dense": report.cost.before.flops, "flops_after": report.cost.after.flops,
        "flops_ratio": report.cost.after.flops / report.cost.before.flops,
        "validation_before": validation.before.accuracy,
        "validation_after": validation.after_finetune.accuracy, "validation_drop": drop,
        "test_before": report.accuracy.before.accuracy,
        "test_after": report.accuracy.after_finetune.accuracy,
        "met": report.cost.after.flops <= 0.4 * report.cost.before.flops and drop <= 0.003,
        "speedup": report.cost.speedup, "timings_s": report.timings_s,
        "target": target.model_dump(mode="json"), "data": report.data and
        report.data.model_dump(mode="json"), "warnings": report.warnings,
    }


LENET300_ROW = "lenet_300_100: compressed download <= 30 KB at <= 0.3 point drop (validation)"
LENET300_BOUND = 30_000


def lenet300_bytes(args: argparse.Namespace, folder: Path, seed: int) -> dict[str, Any]:
    """One fresh dense LeNet-300-100 (``seed``), then one job with a compressed bytes target:
    unstructured sparsity x k-means bits, the chosen one pruned by AGP with distillation."""
    torch.manual_seed(seed)
    model = registry.build("lenet_300_100")
    started = time.perf_counter()
    train = data.load_split(get_settings().mnist_root, True, CPU, InputSpec())
    training.finetune(model, train, FinetuneSpec(epochs=args.lenet300_dense_epochs,
                                                 batch_size=128, lr_schedule="cosine"),
                      training.MaskHold([], []), seed=seed)
    dense_s = time.perf_counter() - started
    path = folder / f"lenet300_{seed}.pt"
    torch.save(model.state_dict(), path)
    spec = JobSpec.model_validate({
        "architecture": "lenet_300_100", "device": "cpu", "seed": seed,
        "pruning": {"schedule": {"kind": "agp", "end": 0.5}},
        "finetune": {"epochs": args.lenet300_epochs, "batch_size": 128, "lr": 1e-3,
                     "lr_schedule": "cosine", "distill": {}},
        "quantize": {"epochs": 2},
        "search": {"max_trials": args.lenet300_trials},
        "target": {"bytes": {"max": LENET300_BOUND, "format": "compressed"},
                   "max_accuracy_drop": 0.003, "trial_images": args.trial_images}})
    started = time.perf_counter()
    try:
        result = run_job(path, spec, folder / f"out{seed}", settings=get_settings())
    except EngineError as exc:  # target_unreachable: the row says so, with the frontier
        return {"row": LENET300_ROW, "seed": seed, "met": False, "error": exc.message,
                "frontier": exc.report, "dense_training_s": round(dense_s, 1),
                "job_wall_s": round(time.perf_counter() - started, 1)}
    wall = time.perf_counter() - started
    report = result.report
    target, validation = report.target, report.accuracy.validation
    assert target is not None and target.chosen is not None and validation is not None
    download = result.outputs[ModelFormat.COMPRESSED].stat().st_size
    drop = validation.before.accuracy - validation.after_finetune.accuracy
    chosen = target.trials[target.chosen]
    return {
        "row": LENET300_ROW, "seed": seed,
        "dense_training_s": round(dense_s, 1), "job_wall_s": round(wall, 1),
        "trials": len(target.trials), "spec": spec.model_dump(mode="json"),
        "chosen": {"sparsity": chosen.sparsity, "bits": chosen.bits},
        "compressed_bytes": download, "report_final_value": target.final_value,
        "validation_before": validation.before.accuracy,
        "validation_after": validation.after_finetune.accuracy, "validation_drop": drop,
        "test_before": report.accuracy.before.accuracy,
        "test_after": report.accuracy.after_finetune.accuracy,
        "test_before_quantization": report.accuracy.before_quantization
        and report.accuracy.before_quantization.accuracy,
        "met": download <= LENET300_BOUND and drop <= 0.003,
        "timings_s": report.timings_s, "target": target.model_dump(mode="json"),
        "data": report.data and report.data.model_dump(mode="json"),
        "warnings": report.warnings,
    }


RESNET18_ROW = ("resnet18 (3 x 32 x 32): >= 2x faster at batch 64 on this CPU at <= 0.5 "
                "point drop (validation), better than uniform removal at the same bound")


def resnet18_latency(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One job with a latency target on a dense ResNet-18 (scripted), channels only."""
    started = time.perf_counter()
    path = (args.resnet18_model if args.resnet18_model is not None
            else dense_upload("resnet18", args.resnet18_seed, args.dense_epochs, folder))
    dense_s = time.perf_counter() - started
    spec = JobSpec.model_validate({
        "device": "cpu", "seed": args.resnet18_seed,
        "input": {"channels": INPUT.channels, "size": INPUT.size},
        "pruning": {"include": conv_weights(load(path))},
        "finetune": {"epochs": args.resnet18_epochs, "batch_size": 128, "lr": 1e-3,
                     "lr_schedule": "cosine"},
        "search": {"max_trials": args.trials},
        "target": {"latency_ms": {"max_ratio": 0.5, "batch": 64}, "max_accuracy_drop": 0.005,
                   "trial_images": args.resnet18_trial_images}})
    started = time.perf_counter()
    try:
        result = run_job(path, spec, folder / "out-resnet18", settings=get_settings())
    except EngineError as exc:  # target_unreachable: the row says so, with the frontier
        return {"row": RESNET18_ROW, "met": False, "error": exc.message, "frontier": exc.report,
                "dense_training_s": round(dense_s, 1),
                "job_wall_s": round(time.perf_counter() - started, 1)}
    wall = time.perf_counter() - started
    report = result.report
    target, validation, cost = report.target, report.accuracy.validation, report.cost
    assert target is not None and target.chosen is not None and validation is not None
    assert cost is not None and target.final_value is not None
    drop = validation.before.accuracy - validation.after_finetune.accuracy
    chosen = target.trials[target.chosen]
    uniform = [t for t in target.trials if t.strategy == "uniform" and t.meets_constraint]
    return {
        "row": RESNET18_ROW, "seed": args.resnet18_seed,
        "dense_model": str(path), "dense_training_s": round(dense_s, 1),
        "job_wall_s": round(wall, 1), "trials": len(target.trials),
        "spec": spec.model_dump(mode="json"),
        "latency_ms_batch_64": {"dense": target.dense_value, "chosen": target.final_value,
                                "speedup": round(target.dense_value / target.final_value, 2)},
        "flops_dense": cost.before.flops, "flops_after": cost.after.flops,
        "validation_before": validation.before.accuracy,
        "validation_after": validation.after_finetune.accuracy, "validation_drop": drop,
        "test_before": report.accuracy.before.accuracy,
        "test_after": report.accuracy.after_finetune.accuracy,
        "chosen_trial": chosen.model_dump(mode="json"),
        "uniform_trials_at_bound": [t.model_dump(mode="json") for t in uniform],
        "better_than_uniform": bool(uniform) and all(
            chosen.val_accuracy >= t.val_accuracy for t in uniform),
        "met": target.final_value <= target.bound and drop <= 0.005,
        "report_speedup": cost.speedup, "timings_s": report.timings_s,
        "target": target.model_dump(mode="json"),
        "data": report.data and report.data.model_dump(mode="json"),
        "warnings": report.warnings,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rows", default="lenet5",
                        help="comma-separated: lenet5, lenet300, resnet18")
    parser.add_argument("--dense-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--trial-images", type=int, default=12000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[20, 21, 22],
                        help="lenet5, lenet300: one fresh dense model and one job per seed")
    parser.add_argument("--lenet300-dense-epochs", type=int, default=10)
    parser.add_argument("--lenet300-epochs", type=int, default=10)
    parser.add_argument("--lenet300-trials", type=int, default=8)
    parser.add_argument("--resnet18-model", type=Path,
                        help="a dense scripted ResNet-18 trained on MNIST at 3 x 32 x 32")
    parser.add_argument("--resnet18-seed", type=int, default=0)
    parser.add_argument("--resnet18-epochs", type=int, default=1)
    parser.add_argument("--resnet18-trial-images", type=int, default=6000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    wanted = args.rows.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        if "lenet5" in wanted:
            for seed in args.seeds:
                rows.append(lenet5_flops(args, Path(scratch), seed))
                print(json.dumps({k: v for k, v in rows[-1].items()
                                  if k not in ("target", "frontier", "spec")}), flush=True)
        if "lenet300" in wanted:
            for seed in args.seeds:
                rows.append(lenet300_bytes(args, Path(scratch), seed))
                print(json.dumps({k: v for k, v in rows[-1].items()
                                  if k not in ("target", "frontier", "spec")}), flush=True)
        if "resnet18" in wanted:
            rows.append(resnet18_latency(args, Path(scratch)))
    result = {"machine": {**machine(CPU), "load_average": list(os.getloadavg())},
              "rows": rows}
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
