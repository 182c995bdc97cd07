"""Recipe variants for 95% AGP + distillation, compared on a validation hold-out only.

Tuning seeds (never the reported ones): for each seed a dense model is trained on the 55000
train images left after the seeded 5000-image hold-out, then each variant runs as a job with
``validation_from: train`` (the same 5000 images held out by the same seed, never trained on)
and no quantisation. The figure that decides is the validation error after fine-tuning (and
its loss); the test split is not read by this script.

    PYTHONPATH=. PRUNER_MNIST_ROOT=/work/shared/datasets python \
        benchmarks/deep_compression_variants.py [--seeds 100 101] [--arch lenet_300_100]

Writes benchmarks/results/deep_compression_variants.json (rewritten after every run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.deep_compression import dense_model  # the same dense recipe
from core.jobs.spec import JobSpec
from core.settings import Settings
from worker.engine.pipeline import run_job

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "deep_compression_variants.json"
BATCH = 128
BASE: dict[str, Any] = {"epochs": 20, "lr": 1e-3, "lr_schedule": "cosine", "batch_size": BATCH,
                        "distill": {}, "validation_from": "train", "validation_size": 5000}
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},  # the documented recipe (fine-tune as long as the dense training, at its lr)
    "long40": {"epochs": 40},  # twice the dense schedule
    "distill_w0.9": {"distill": {"weight": 0.9}},
    "wd1e-4": {"weight_decay": 1e-4},
    # random translations of the training images (+-2 px), the teacher run on each batch
    "augment": {"augment": {}},
    "augment_nodistill": {"augment": {}, "distill": None},
    "augment_long40": {"augment": {}, "epochs": 40},
    "augment_shift1": {"augment": {"shift": 1}},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--arch", default="lenet_300_100")
    parser.add_argument("--dense-epochs", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--dense-from", type=Path, metavar="DIR",
                        help="the dense models of an earlier run (DIR printed at its start)")
    args = parser.parse_args()
    settings = Settings(worker_device="cpu")
    folder = Path(tempfile.mkdtemp(prefix="dc-variants-"))
    print(f"models and job outputs in {folder}", flush=True)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "loadavg_at_start": os.getloadavg(),
                    "note": "2-core VM shared with other work"},
        "decides_on": "validation: 5000 train images held out by the seed, never trained on",
        "base": BASE, "variants": {k: VARIANTS[k] for k in args.variants}, "runs": []}
    for seed in args.seeds:
        if args.dense_from is not None:  # trained by an earlier run with the same recipe
            shutil.copy(args.dense_from / f"{args.arch}-{seed}.pt", folder)
        else:
            dense_model(args.arch, args.dense_epochs, seed, settings, folder)
        for variant in args.variants:
            finetune = {**BASE, **VARIANTS[variant]}
            spec = JobSpec.model_validate({
                "architecture": args.arch, "device": "cpu", "seed": seed,
                "pruning": {"amount": 0.95, "schedule": {"kind": "agp", "end": 0.5,
                                                         "every_steps": 100}},
                "finetune": finetune})
            started = time.perf_counter()
            report = run_job(folder / f"{args.arch}-{seed}.pt", spec,
                             folder / f"out-{seed}-{variant}", settings=settings).report
            validation = report.accuracy.validation
            assert validation is not None
            run = {"seed": seed, "variant": variant,
                   "sparsity": round(report.targeted.sparsity, 5),
                   "dense_val_error": round(1 - validation.before.accuracy, 5),
                   "val_error": round(1 - validation.after_finetune.accuracy, 5),
                   "val_loss": round(validation.after_finetune.loss, 5),
                   "seconds": round(time.perf_counter() - started, 1)}
            result["runs"].append(run)
            args.results.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(run), flush=True)


if __name__ == "__main__":
    main()
