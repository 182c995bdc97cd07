"""Accuracy-budget search: the highest sparsity whose fine-tuned validation accuracy stays within
``max_accuracy_drop`` of the dense model's.

Each trial restores the dense weights, prunes with the spec's method, scope and schedule, and
fine-tunes as the spec says. Only the validation split decides; the test accuracy of each trial
is measured for the report and never read here.

Trial amounts bisect the *remaining* fraction geometrically (keep = sqrt(keep_ok * keep_bad)),
which at high sparsity resolves 95% vs 97% as finely as 50% vs 70%: trial 1 is the upper bound
``pruning.amount``; when it fails, each next trial lies geometrically between the best amount
within budget so far (dense: keep 1) and the lowest amount that broke it. The search stops after
``max_trials`` trials, when the bound itself passes, or when the bracket is under 0.001.

``per_layer``: each trial's overall sparsity is spread over the tensors by the equal-drop rule
of ``sensitivity.allocate`` (given to the pruning as per-tensor overrides).
"""

from __future__ import annotations

import glob
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.report import Evaluation, Progress, Search, Sensitivity, Trial
from core.jobs.spec import FinetuneSpec, PruningSpec, SearchSpec
from worker.engine import pruning, sensitivity, training
from worker.engine.data import Split
from worker.engine.errors import Cancelled, EngineError
from worker.engine.schedules import Masks, ScheduleRun

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]
MIN_BRACKET = 0.001


def next_amount(upper: float, passed: list[float], failed: list[float]) -> float | None:
    """The next amount to try, or None when the search is settled."""
    if not passed and not failed:
        return upper
    if not failed:
        return None  # the upper bound itself is within budget
    keep_ok = 1.0 - max(passed, default=0.0)
    keep_bad = 1.0 - min(failed)
    amount = round(1.0 - math.sqrt(keep_ok * keep_bad), 4)
    if amount - (1.0 - keep_ok) < MIN_BRACKET or min(failed) - amount < MIN_BRACKET / 2:
        return None
    return amount


@dataclass
class Outcome:
    report: Search
    masks: Masks
    spec: PruningSpec  # as applied by the chosen trial
    after_pruning: Evaluation  # test split, right after the chosen trial's first pruning


@dataclass
class Searcher:
    model: nn.Module
    targets: list[pruning.Target]
    pruning_spec: PruningSpec
    finetune: FinetuneSpec
    search: SearchSpec
    train: Split | None
    validation: Split
    test: Split
    seed: int
    dense_val: Evaluation
    scan: Sensitivity | None = None  # per_layer: the sensitivity curves
    on_progress: ProgressFn | None = None
    should_cancel: CancelFn | None = None

    def run(self) -> Outcome:
        dense = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        upper = float(self.pruning_spec.amount)
        trials: list[Trial] = []
        best: tuple[Trial, dict[str, torch.Tensor], Masks, PruningSpec, Evaluation] | None = None
        passed: list[float] = []
        failed: list[float] = []
        while len(trials) < self.search.max_trials:
            amount = next_amount(upper, passed, failed)
            if amount is None:
                break
            self.model.load_state_dict(dense)
            trial, masks, spec, after_pruning = self._trial(amount, len(trials) + 1)
            trials.append(trial)
            (passed if trial.within_budget else failed).append(amount)
            if trial.within_budget and (best is None or amount > best[0].amount):
                state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                best = (trial, state, masks, spec, after_pruning)
        if best is None:
            raise EngineError(JobErrorCode.BUDGET_UNREACHABLE, _unreachable(self.search, trials,
                                                                             self.dense_val))
        trial, state, masks, spec, after_pruning = best
        self.model.load_state_dict(state)
        report = Search(max_accuracy_drop=self.search.max_accuracy_drop,
                        per_layer=self.search.per_layer,
                        dense_accuracy=self.dense_val.accuracy, chosen_amount=trial.amount,
                        trials=trials)
        return Outcome(report, masks, spec, after_pruning)

    def _trial(self, amount: float, index: int) -> tuple[Trial, Masks, PruningSpec, Evaluation]:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled()
        if self.on_progress is not None:
            self.on_progress(Progress(phase="trial", trial=index, trials=self.search.max_trials,
                                      sparsity=amount))
        started = time.perf_counter()
        spec, amounts = self._trial_spec(amount)
        evaluations: list[Evaluation] = []
        run = ScheduleRun(
            self.model, self.targets, spec, self.finetune, self.train, self.seed,
            on_progress=self.on_progress, should_cancel=self.should_cancel,
            after_first_prune=lambda: evaluations.append(
                training.evaluate(self.model, self.test, self.should_cancel)),
        )
        masks = run.run()
        val = training.evaluate(self.model, self.validation, self.should_cancel).accuracy
        test = training.evaluate(self.model, self.test, self.should_cancel).accuracy
        within = self.dense_val.accuracy - val <= self.search.max_accuracy_drop + 1e-12
        trial = Trial(amount=amount, val_accuracy=val, test_accuracy=test,
                      seconds=round(time.perf_counter() - started, 3), within_budget=within,
                      amounts=amounts)
        return trial, masks, spec, evaluations[0]

    def _trial_spec(self, amount: float) -> tuple[PruningSpec, dict[str, float] | None]:
        if not self.search.per_layer:
            return self.pruning_spec.model_copy(update={"amount": amount}), None
        assert self.scan is not None
        elements = {t.name: t.param.numel() for t in self.targets}
        amounts = sensitivity.allocate(self.scan, elements, amount)
        overrides = {glob.escape(name): a for name, a in amounts.items()}
        return self.pruning_spec.model_copy(
            update={"amount": amount, "overrides": overrides}), amounts


def _unreachable(search: SearchSpec, trials: list[Trial], dense: Evaluation) -> str:
    best = max(trials, key=lambda t: t.val_accuracy)
    return (
        f"no tried amount keeps the validation accuracy within {search.max_accuracy_drop} of "
        f"the dense model's {dense.accuracy:.4f}: the best trial, amount {best.amount}, reached "
        f"{best.val_accuracy:.4f} (a drop of {dense.accuracy - best.val_accuracy:.4f}) after "
        f"{len(trials)} trial(s); allow a larger max_accuracy_drop, more finetune.epochs or "
        "more max_trials"
    )
