"""How long a job's fine-tuning will take, judged at submission without torch.

The figure per epoch is ``Settings.finetune_epoch_s``: what one fine-tune epoch takes on this
deployment's workers (measure it with benchmarks/engine_finetune.py or a job's
``timings_s.finetune``). A search whose estimate exceeds the job time limit is refused with
422 before it is queued, and so is a target search (its candidates' short fine-tunes, each
``target.trial_images`` images, two passes each on a compressed target, plus the chosen one's
``finetune.epochs``, bounded by ``search.max_trials`` or ``target.max_trials``; its cost table and
bisection, evaluations and latency timings, are not counted). One that still overruns fails
``timeout`` as any job does. Other jobs are not judged ahead (as before: a long plain job may
well be cancelled before its limit, and fails ``timeout`` cleanly when it is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.jobs.spec import JobSpec


@dataclass(frozen=True)
class Estimate:
    seconds: float
    epochs: int  # fine-tune epochs the job will run in all
    field: tuple[str, ...]  # the spec field to change when it does not fit


def epochs_per_pruning(spec: JobSpec) -> int:
    """Epochs one pruning runs: the iterative schedule fine-tunes after every round."""
    rounds = spec.pruning.schedule.rounds if spec.pruning.schedule.kind == "iterative" else 1
    return spec.finetune.epochs * rounds


MNIST_TRAIN = 60_000


def estimate(spec: JobSpec, epoch_s: float) -> Estimate:
    per_pruning = epochs_per_pruning(spec)
    if spec.target is not None:  # short fine-tunes per candidate, then the chosen one's
        # a compressed target's candidate takes two passes: masked weights, then centroids
        passes = 2 if spec.target.quantized else 1
        trials = passes * spec.target_trials * spec.target.trial_images / MNIST_TRAIN
        epochs = per_pruning + math.ceil(trials)
        where = "search" if spec.search is not None else "target"
        return Estimate(epochs * epoch_s, epochs, (where, "max_trials"))
    if spec.search is not None:
        epochs = per_pruning * spec.search.max_trials
        return Estimate(epochs * epoch_s, epochs, ("search", "max_trials"))
    field = ("pruning", "schedule", "rounds") if spec.pruning.schedule.kind == "iterative" \
        else ("finetune", "epochs")
    return Estimate(per_pruning * epoch_s, per_pruning, field)


def too_long(spec: JobSpec, epoch_s: float, limit_s: float) -> str | None:
    """Why the search cannot fit in ``limit_s`` seconds, or None when it can (or is no
    search)."""
    if spec.search is None and spec.target is None:
        return None
    guess = estimate(spec, epoch_s)
    if guess.seconds <= limit_s:
        return None
    what = "target search" if spec.target is not None else "search"
    return (f"the {what} would run {guess.epochs} fine-tune epochs, about {guess.seconds:.0f} s at "
            f"{epoch_s:g} s per epoch on this deployment's workers, over the job time limit of "
            f"{limit_s:.0f} s; ask for fewer")
