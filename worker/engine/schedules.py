"""Pruning schedules: one-shot, Han-style iterative rounds, Zhu & Gupta's gradual (AGP) ramp.

Every schedule ends with exactly the masks the spec asks for (``pruning.amount``, overrides,
scope and method as in one-shot pruning) and never revives a pruned unit: each new mask is
computed with the previous one's pruned units ranked first (``methods.sticky_scores``), and
the sparsity a schedule asks for never decreases, so every later mask contains every earlier
pruned unit. Between mask updates the masks are held through the optimizer (``MaskHold``).

Intermediate amounts (per tensor group: the global amount and each override ``f``):
- iterative, after round k of r: ``1 - (1 - f) ** (k / r)`` (equal fractions of the remaining
  weights; round r uses ``f`` itself);
- agp at step t: ``f + (s_i - f) * (1 - p) ** 3``, ``p = (t - t0) / (t_end - t0)`` clipped to
  [0, 1], ``s_i = min(initial_sparsity, f)``; updated at ``t0, t0 + every_steps, ...`` and at
  ``t_end``, where p = 1 gives ``f`` exactly. From step 0 to t0 the model is held at ``s_i``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.report import Progress
from core.jobs.spec import Agp, FinetuneSpec, Iterative, PruningSpec
from worker.engine import pruning, training
from worker.engine.data import Split
from worker.engine.errors import Cancelled, EngineError
from worker.engine.methods import PruningError

Masks = dict[str, torch.Tensor]
ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def agp_sparsity(step: int, t0: int, t_end: int, initial: float, final: float) -> float:
    """Zhu & Gupta's cubic ramp from ``initial`` at ``t0`` to ``final`` at ``t_end``."""
    progress = min(max((step - t0) / (t_end - t0), 0.0), 1.0)
    start = min(initial, final)
    return final + (start - final) * (1.0 - progress) ** 3


def iterative_sparsity(round_: int, rounds: int, final: float) -> float:
    """Sparsity after ``round_`` (1-based) of ``rounds`` geometric rounds toward ``final``."""
    if round_ >= rounds:
        return final
    return 1.0 - float((1.0 - final) ** (round_ / rounds))


def scaled_spec(spec: PruningSpec, ramp: Callable[[float], float]) -> PruningSpec:
    """``spec`` with the global amount and every override passed through ``ramp``."""
    def fraction(amount: int | float) -> float:
        assert isinstance(amount, float)  # the spec refuses counts with these schedules
        return ramp(amount)

    return spec.model_copy(update={
        "amount": fraction(spec.amount),
        "overrides": {k: fraction(v) for k, v in spec.overrides.items()},
    })


def agp_window(schedule: Agp, total_steps: int) -> tuple[int, int]:
    """(t0, t_end) in optimizer steps; at least one step apart."""
    t0 = int(schedule.start * total_steps)
    t_end = max(int(round(schedule.end * total_steps)), t0 + 1)
    return t0, t_end


@dataclass
class ScheduleRun:
    """One pruning of ``model``: the spec's schedule with its fine-tuning, in place."""

    model: nn.Module
    targets: list[pruning.Target]
    spec: PruningSpec
    finetune: FinetuneSpec
    train: Split | None  # None: no fine-tuning (epochs 0)
    seed: int
    on_progress: ProgressFn | None = None
    should_cancel: CancelFn | None = None
    after_first_prune: Callable[[], None] | None = None  # e.g. the "after_pruning" evaluation
    masks: Masks = field(default_factory=dict)
    hold: training.MaskHold | None = None  # the masks the running fine-tune holds
    timings: dict[str, float] = field(default_factory=dict)  # prune, finetune (s)
    _generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def run(self) -> Masks:
        schedule = self.spec.schedule
        if isinstance(schedule, Iterative):
            self._iterative(schedule)
        elif isinstance(schedule, Agp):
            self._agp(schedule)
        else:
            self._prune(self.spec)
            self._first_pruned()
            self._finetune(self.seed)
        return self.masks

    def _iterative(self, schedule: Iterative) -> None:
        for k in range(1, schedule.rounds + 1):
            def ramp(final: float, k: int = k) -> float:
                return iterative_sparsity(k, schedule.rounds, final)

            step_spec = self.spec if k == schedule.rounds else scaled_spec(self.spec, ramp)
            self._report(Progress(phase="round", round=k, rounds=schedule.rounds,
                                  sparsity=_amount(step_spec)))
            self._prune(step_spec)
            if k == 1:
                self._first_pruned()
            self._finetune(self.seed + k - 1)

    def _agp(self, schedule: Agp) -> None:
        assert self.train is not None  # the spec refuses agp without fine-tuning
        total = training.steps_per_epoch(self.train, self.finetune) * self.finetune.epochs
        t0, t_end = agp_window(schedule, total)

        def at(step: int) -> PruningSpec:
            if step >= t_end:
                return self.spec  # exactly the final amounts
            return scaled_spec(self.spec, lambda f: agp_sparsity(
                step, t0, t_end, schedule.initial_sparsity, f))

        def on_step(step: int) -> None:
            if step == t_end or (t0 <= step < t_end and (step - t0) % schedule.every_steps == 0):
                spec = at(step)
                self._report(Progress(phase="pruning_step", step=step + 1, steps=total,
                                      sparsity=_amount(spec)))
                self._prune(spec)

        self._prune(at(0))
        self._first_pruned()
        self._finetune(self.seed, on_step)
        if t_end >= total:  # the ramp ends with the fine-tune: the final masks, then hold
            self._prune(self.spec)

    def _prune(self, spec: PruningSpec) -> None:
        started = time.perf_counter()
        try:
            self.masks = pruning.compute_masks(
                self.targets, spec, self._generator, previous=self.masks or None)
        except PruningError as exc:
            raise EngineError(JobErrorCode.INVALID_SPEC, str(exc)) from exc
        pruning.apply_masks(self.targets, self.masks)
        if self.hold is not None:
            self.hold.masks = [self.masks[t.name] for t in self.targets]
        self._time("prune", started)

    def _finetune(self, seed: int, on_step: Callable[[int], None] | None = None) -> None:
        if self.train is None:
            return
        self._report(Progress(phase="finetuning"))
        started = time.perf_counter()
        self.hold = training.MaskHold([t.param for t in self.targets],
                                      [self.masks[t.name] for t in self.targets])
        training.finetune(self.model, self.train, self.finetune, self.hold, seed=seed,
                          on_progress=self.on_progress, should_cancel=self.should_cancel,
                          on_step=on_step)
        self.hold = None
        self._time("finetune", started)

    def _time(self, name: str, started: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started

    def _first_pruned(self) -> None:
        if self.after_first_prune is not None:
            self.after_first_prune()

    def _report(self, progress: Progress) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled()
        if self.on_progress is not None:
            self.on_progress(progress)


def _amount(spec: PruningSpec) -> float:
    return float(spec.amount)
