"""What the two target searches share: the scope their trials run in, and how one candidate
becomes a scored ``TargetTrial``.

``targets.Explorer`` tries channel widths (latency, FLOPs, parameters); ``target_bits``'
``BitsExplorer`` tries sparsity x k-means bits (a compressed file's bytes). Both report each
trial as the job's progress, fine-tune it briefly on its own seeded draw of train images,
score it on the validation split (which decides) and the test split (reported only), and
judge it against the same bound and accuracy floor: that is this module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from core.jobs.report import Progress, TargetTrial
from core.jobs.spec import JobSpec, TargetSpec
from worker.engine import training
from worker.engine.data import Split


@dataclass(frozen=True)
class TrialScope:
    """The bound a trial must meet, the splits, the job's spec, the dense model's validation
    accuracy (the drop is measured from it) and the job's progress and cancel hooks."""

    bound: float
    validation: Split
    test: Split
    train: Split | None
    spec: JobSpec
    dense_accuracy: float
    on_progress: training.ProgressFn | None = None
    should_cancel: training.CancelFn | None = None

    @property
    def target(self) -> TargetSpec:
        assert self.spec.target is not None, "a target search needs spec.target"
        return self.spec.target

    def begin(self, index: int) -> float:
        """Says that trial ``index`` runs (the job's progress); its start time."""
        if self.on_progress is not None:
            self.on_progress(Progress(phase="target", trial=index,
                                      trials=self.spec.target_trials))
        return time.perf_counter()

    def images(self, index: int) -> Split | None:
        """Trial ``index``'s short fine-tune images: ``target.trial_images`` drawn with the
        trial's own seed (None: no train split, or ``trial_images`` 0)."""
        if self.train is None or self.target.trial_images == 0:
            return None
        return subset(self.train, self.target.trial_images, self.spec.seed + index)

    def accuracy(self, model: nn.Module, split: Split) -> float:
        return training.evaluate(model, split, self.should_cancel).accuracy

    def scored(self, model: nn.Module, started: float, value: float, *, strategy: str,
               level: float, widths: dict[str, int] | None = None,
               sparsity: float | None = None, bits: int | None = None) -> TargetTrial:
        """The trial of ``model`` (its constraint ``value`` measured by the caller): scored
        on validation (decides) and test (reported), judged against the bound and the drop."""
        val = self.accuracy(model, self.validation)
        test = self.accuracy(model, self.test)
        meets = value <= self.bound
        within = self.dense_accuracy - val <= self.target.max_accuracy_drop + 1e-12
        return TargetTrial(strategy=strategy, level=level, widths=widths or {},
                           sparsity=sparsity, bits=bits, constraint_value=value,
                           meets_constraint=meets, val_accuracy=val, test_accuracy=test,
                           within_drop=within, met=meets and within,
                           seconds=round(time.perf_counter() - started, 3))


def subset(train: Split, size: int, seed: int) -> Split:
    """``size`` train images drawn by a seeded permutation (teacher rows follow them)."""
    size = min(size, len(train))
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:size]
    index = index.to(train.labels.device)
    with torch.inference_mode(False):
        teacher = None if train.teacher is None else train.teacher[index]
        return Split(train.images[index], train.labels[index], teacher, train.teacher_fn)
