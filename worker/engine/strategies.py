"""The three ways a job prunes, each a function returning one ``Pruned``.

- shrink: remove whole channels (a smaller dense model), then fine-tune it as it is;
- search: the accuracy-budget search over trials, keeping the best within the budget;
- schedule: the spec's schedule (one-shot, iterative, AGP) with its masked fine-tuning.
"""

from __future__ import annotations

import copy

import torch

from core.jobs.report import Evaluation, Sensitivity
from worker.engine import pruning, training
from worker.engine.job import Job
from worker.engine.results import Dense, Pruned, Splits, Upload
from worker.engine.schedules import ScheduleRun
from worker.engine.search import Searcher


def prune(job: Job, upload: Upload, splits: Splits, dense: Dense, scan: Sensitivity | None
          ) -> Pruned:
    """Prune ``upload.model`` as the spec says, fine-tuning included."""
    job.enter("pruning")
    if upload.shrinking is not None:
        return _shrink(job, upload, splits)
    if job.spec.search is not None and splits.validation is not None \
            and dense.validation is not None:
        return _search(job, upload, splits, dense, scan)
    return _schedule(job, upload, splits)


def _shrink(job: Job, upload: Upload, splits: Splits) -> Pruned:
    assert upload.shrinking is not None
    twin = copy.deepcopy(upload.model)  # the speedup is timed against it at the end
    with job.timed("prune"):
        shrunk = upload.shrinking.apply()
    # a smaller dense model: nothing left to mask, so the schedule fine-tunes it as it is
    after = _run_schedule(job, shrunk.model, [], upload, splits)
    return Pruned(shrunk.model, upload.pruning, after, shrunk_rows=shrunk.rows,
                  shrink=shrunk.report, dense_twin=twin)


def _search(job: Job, upload: Upload, splits: Splits, dense: Dense, scan: Sensitivity | None
            ) -> Pruned:
    assert splits.validation is not None and dense.validation is not None
    spec = job.spec
    assert spec.search is not None
    with job.timed("search"):
        outcome = Searcher(
            upload.model, upload.targets, upload.pruning, spec.finetune, spec.search,
            splits.train, splits.validation, splits.test, spec.seed, dense.validation, scan,
            job.on_progress, job.should_cancel,
        ).run()
    # per_layer: the per-tensor amounts are in report.search (the trial), not the spec
    applied = outcome.spec.model_copy(update={"overrides": spec.pruning.overrides})
    return Pruned(upload.model, applied, outcome.after_pruning, targets=upload.targets,
                  search=outcome.report)


def _schedule(job: Job, upload: Upload, splits: Splits) -> Pruned:
    after = _run_schedule(job, upload.model, upload.targets, upload, splits)
    return Pruned(upload.model, upload.pruning, after, targets=upload.targets)


def _run_schedule(job: Job, model: torch.nn.Module, targets: list[pruning.Target],
                  upload: Upload, splits: Splits) -> Evaluation:
    """Run the spec's schedule in place; the test accuracy right after the first pruning."""
    evaluations: list[Evaluation] = []

    def after_first_prune() -> None:
        job.enter("evaluating")
        with job.timed("evaluate"):
            evaluations.append(training.evaluate(model, splits.test, job.should_cancel))

    run = ScheduleRun(model, targets, upload.pruning, job.spec.finetune, splits.train,
                      job.spec.seed, job.on_progress, job.should_cancel, after_first_prune)
    run.run()
    job.clock.add(run.timings)
    return evaluations[0]
