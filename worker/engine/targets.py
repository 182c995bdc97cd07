"""Compress to a target (``spec.target``): channel removal per group, chosen on validation.
(A bytes target on the ``compressed`` download searches sparsity and bits: ``target_bits``.)

NetAdapt's shape (Yang et al., ECCV 2018), kept small:

1. **Per-group table.** Each prunable channel group (``shrink``'s analysis) is narrowed alone
   by each of ``FRACTIONS``: the constraint is counted (FLOPs, parameters, bytes) or measured
   on the job's device (latency), and the validation accuracy without fine-tuning is its
   sensitivity.
2. **Allocations.** A level t in [0, 1] gives each group a share of its channels to remove:
   ``uniform`` (t x ``MAX_FRACTION`` everywhere), ``sensitivity`` (the equal-drop rule of
   ``sensitivity.allocate`` over the groups' curves, each group weighted by the cost it saves,
   so t is about the share of the removable cost asked) or ``mixed`` (their mean). For each
   strategy the lowest t whose model meets the bound is bisected (``BISECT_STEPS``) on the
   built models themselves, so the constraint is never an estimate.
3. **Trials.** Up to ``search.max_trials`` (``JobSpec.target_trials``) candidates (each
   strategy at its level, then a looser and a tighter sensitivity point for the frontier),
   each rebuilt from the dense weights and fine-tuned briefly (one pass over
   ``target.trial_images`` train images), then scored on validation; the test accuracy is
   measured for the report only.
4. **Choice.** The candidate meeting the constraint with the best validation accuracy is
   rebuilt and fine-tuned as ``finetune`` says; its validation drop must stay within
   ``max_accuracy_drop``. Otherwise the job fails ``target_unreachable``.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
from dataclasses import dataclass, field

import torch
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.formats import ModelFormat
from core.jobs.report import (
    GroupCost,
    Sensitivity,
    TargetReport,
    TargetTrial,
    TensorSensitivity,
)
from core.jobs.spec import JobSpec, Method, PruningSpec, TargetSpec
from worker.engine import measure, pruning, saving, script_copy, sensitivity, training
from worker.engine.errors import EngineError
from worker.engine.shrink import Prepared, Shrunk, prepare
from worker.engine.shrink.plan import GroupPlan, plan_groups
from worker.engine.shrink.stage import channel_graph
from worker.engine.trials import TrialScope

FRACTIONS = (0.25, 0.5, 0.75)
MAX_FRACTION = 0.9  # a group keeps at least a tenth of its channels (and at least one)
BISECT_STEPS = 7


def channel_spec(spec: JobSpec) -> PruningSpec:
    """The pruning a target applies: whole output channels by their L``n`` norm, removed."""
    return spec.pruning.model_copy(update={
        "method": Method.LN_STRUCTURED, "dim": 0, "amount": 0, "shrink": True,
        "overrides": {}})


@dataclass
class Builder:
    """Makes the shrunk model for a width config, always from the dense weights."""

    prepared: Prepared  # the analysis and the dense model (never modified)
    seed: int
    groups: list[GroupPlan] = field(init=False)  # the prunable ones
    _targeted: set[str] = field(init=False)  # the targeted weights' names

    def __post_init__(self) -> None:
        self.groups = [p for p in self.prepared.plans if p.pruned]
        self._targeted = {t.name for t in
                          pruning.find_targets(self.prepared.model, self.prepared.spec)}

    def removed(self, fractions: dict[str, float]) -> dict[str, int]:
        """Channels removed per group for a share each (at least one channel kept)."""
        return {p.name: min(round(fractions.get(p.name, 0.0) * p.group.channels),
                            p.group.channels - 1) for p in self.groups}

    def widths(self, removed: dict[str, int]) -> dict[str, int]:
        return {p.name: p.group.channels - removed.get(p.name, 0) for p in self.groups}

    def spec(self, removed: dict[str, int]) -> PruningSpec:
        """The pruning applied: channels removed per group, as counts keyed by the group's
        first targeted producer (what ``shrink`` reads)."""
        overrides: dict[str, int | float] = {}
        for plan in self.groups:
            first = next(p for p in plan.group.producers if f"{p}.weight" in self._targeted)
            overrides[glob.escape(f"{first}.weight")] = removed.get(plan.name, 0)
        return self.prepared.spec.model_copy(update={"overrides": overrides})

    def build(self, removed: dict[str, int]) -> Shrunk:
        base = self.prepared
        spec = self.spec(removed)
        model = _copy(base.model)
        plans = plan_groups(base.graph, dict(model.state_dict()), spec, self._targeted,
                            torch.Generator().manual_seed(self.seed))
        return Prepared(model, spec, base.architecture, base.graph, plans).apply()


def _copy(model: nn.Module) -> nn.Module:
    """A trainable copy of the dense model. Not ``deepcopy`` for TorchScript: it clones the
    parameters under autograd, so every tensor the shrink leaves unsliced (a head's bias)
    would be a non-leaf (``CloneBackward``) that no optimizer takes, with its gradients
    flowing back into the dense model's."""
    if isinstance(model, torch.jit.ScriptModule):
        return script_copy.reloaded(model)
    return copy.deepcopy(model)


@dataclass
class Meter:
    """The target's constraint of a model: counted, or measured on the job's device."""

    target: TargetSpec
    spec: JobSpec
    device: torch.device
    sample: tuple[int, ...] | None = None  # one input as the job feeds it (the dataset's)
    reference: tuple[nn.Module, float] | None = None  # latency: the dense model, its p50

    @property
    def name(self) -> str:
        return self.target.constraint[0]

    def paired(self, dense: nn.Module, dense_value: float) -> Meter:
        """This meter with every latency timed against the dense model: a candidate's value
        is its p50 over the dense model's, timed in alternation on the same batch (both see
        the worker's load of that moment), times ``dense_value``, the dense p50 the bound
        was set from. Timed alone, a load that changes during the search (another job, a
        test run) moves every figure by itself: one ResNet-18 search, its dense model timed
        under load, took a 1.2x model for 2x. Counted constraints are unchanged."""
        return dataclasses.replace(self, reference=(dense, dense_value))

    def detail(self) -> str:
        if self.target.latency_ms is not None:
            return (f"p50 ms at batch {self.target.latency_ms.batch} on {self.device} "
                    f"({measure.latency_method(self.device)})")
        if self.target.bytes is not None:
            return f"file bytes of format {self.target.bytes.format}"
        return {"flops": "dense FLOPs per image, counted",
                "parameters": "parameters, counted"}[self.name]

    def __call__(self, model: nn.Module) -> float:
        if self.target.flops is not None:
            return float(measure.count_flops(model, self.spec.input, self.device, self.sample)[0])
        if self.target.parameters is not None:
            return float(sum(p.numel() for p in model.parameters()))
        if self.target.latency_ms is not None:
            batch = self.target.latency_ms.batch
            if self.reference is None:
                return measure.latency_at(model, self.spec.input, self.device, batch,
                                          self.sample).p50
            dense, dense_value = self.reference
            mine, theirs = measure.latencies_at([model, dense], self.spec.input, self.device,
                                                batch, self.sample)
            return dense_value * mine.p50 / theirs.p50
        assert self.target.bytes is not None
        fmt = ModelFormat(self.target.bytes.format)
        sizes = measure.bytes_as_saved(
            model, lambda m, folder: saving.save_all(m, fmt, folder), self.device)
        if fmt.value not in sizes:
            raise EngineError(JobErrorCode.INVALID_SPEC, f"this model cannot be written as "
                              f"{fmt.value}: choose another target.bytes.format")
        return float(sizes[fmt.value])


@dataclass
class Explorer:
    """The search itself: table, allocations, trials, choice (module docstring)."""

    builder: Builder
    meter: Meter
    scope: TrialScope
    _values: dict[tuple[int, ...], float] = field(default_factory=dict)

    def table(self) -> list[GroupCost]:
        rows = []
        for plan in self.builder.groups:
            values, accuracies = [], []
            for fraction in FRACTIONS:
                removed = self.builder.removed({plan.name: fraction})
                model = self.builder.build(removed).model
                values.append(self._value(removed, model))
                accuracies.append(self.scope.accuracy(model, self.scope.validation))
            rows.append(GroupCost(group=plan.name, channels=plan.group.channels,
                                  fractions=list(FRACTIONS), constraint_values=values,
                                  val_accuracy=accuracies))
        return rows

    def allocation(self, strategy: str, level: float, table: list[GroupCost],
                   dense_value: float) -> dict[str, float]:
        uniform = {row.group: level * MAX_FRACTION for row in table}
        if strategy == "uniform":
            return uniform
        guided = _equal_drop(table, level * MAX_FRACTION, self.scope.dense_accuracy,
                             dense_value)
        if strategy == "sensitivity":
            return guided
        return {g: (uniform[g] + guided[g]) / 2 for g in uniform}

    def lowest_level(self, strategy: str, table: list[GroupCost], dense_value: float
                     ) -> float:
        """The lowest level whose model meets the bound (1.0 when even that does not)."""
        lo, hi = 0.0, 1.0
        if not self._meets(strategy, hi, table, dense_value):
            return hi
        for _ in range(BISECT_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self._meets(strategy, mid, table, dense_value) else (mid, hi)
        return hi

    def trial(self, index: int, strategy: str, level: float, table: list[GroupCost],
              dense_value: float) -> TargetTrial:
        started = self.scope.begin(index)
        removed = self.builder.removed(self.allocation(strategy, level, table, dense_value))
        model = self.builder.build(removed).model
        value = self._value(removed, model)
        images = self.scope.images(index)
        if images is not None:
            spec = self.scope.spec.finetune.model_copy(update={"epochs": 1})
            training.finetune(model, images, spec, training.MaskHold([], []),
                              seed=self.scope.spec.seed + index,
                              should_cancel=self.scope.should_cancel)
        return self.scope.scored(model, started, value, strategy=strategy,
                                 level=round(level, 4), widths=self.builder.widths(removed))

    def _meets(self, strategy: str, level: float, table: list[GroupCost],
               dense_value: float) -> bool:
        removed = self.builder.removed(self.allocation(strategy, level, table, dense_value))
        key = tuple(removed.values())
        if key not in self._values:
            self._value(removed, self.builder.build(removed).model)
        return self._values[key] <= self.scope.bound

    def _value(self, removed: dict[str, int], model: nn.Module) -> float:
        key = tuple(removed.values())
        if key not in self._values:
            self._values[key] = self.meter(model)
        return self._values[key]



def trial_plan(explorer: Explorer, table: list[GroupCost], dense_value: float
               ) -> list[tuple[str, float]]:
    """(strategy, level) of each trial, in order, at most ``JobSpec.target_trials``."""
    levels = {s: explorer.lowest_level(s, table, dense_value)
              for s in ("sensitivity", "uniform", "mixed")}
    guided = levels["sensitivity"]
    plan = [("sensitivity", guided), ("uniform", levels["uniform"]),
            ("mixed", levels["mixed"]), ("sensitivity", round(guided * 0.7, 4)),
            ("sensitivity", round(guided + (1 - guided) / 2, 4))]
    return plan[:explorer.scope.spec.target_trials]


def final_warning(report: TargetReport) -> str | None:
    """A chosen model whose constraint, measured again after its full fine-tune, is above the
    bound (latency only: a timing varies with the worker's load; counted values do not move,
    and a compressed target is fitted and checked). The job keeps its model: the search
    decided on its trials' measurements, and the report says what the last one found."""
    if report.chosen is None or report.final_value is None or report.final_value <= report.bound:
        return None
    trial = report.trials[report.chosen].constraint_value
    return (f"target: the chosen model measured {report.constraint} {report.final_value:.4g} "
            f"after its full fine-tune ({report.detail}; timed in alternation with the dense "
            f"model, as every candidate), above the bound {report.bound:.4g}; its trial "
            f"measured {trial:.4g}. "
            "Latency varies with the worker's load: ask for a tighter bound for a margin")


def choose(trials: list[TargetTrial]) -> int | None:
    """The candidate meeting the constraint with the best validation accuracy (its index)."""
    meeting = [i for i, t in enumerate(trials) if t.meets_constraint]
    return max(meeting, key=lambda i: trials[i].val_accuracy) if meeting else None


def _equal_drop(table: list[GroupCost], share: float, dense_accuracy: float,
                dense_value: float) -> dict[str, float]:
    """Per-group shares by the equal-drop rule, each group weighted by the cost it saves."""
    scan = Sensitivity(dense_accuracy=dense_accuracy, amounts=list(FRACTIONS), tensors=[
        TensorSensitivity(name=row.group, accuracy=row.val_accuracy) for row in table])
    savings = {row.group: max(dense_value - row.constraint_values[-1], 0.0) / FRACTIONS[-1]
               for row in table}
    total = sum(savings.values()) or 1.0
    weights = {g: max(1, round(1e6 * s / total)) for g, s in savings.items()}
    amounts = sensitivity.allocate(scan, weights, share)
    return {g: min(a, MAX_FRACTION) for g, a in amounts.items()}


def prepare_groups(model: nn.Module, spec: JobSpec) -> Prepared:
    """The channel-group analysis, before any data is read. Unlike ``shrink``, a group the
    analysis cannot rewrite (it reaches an op such as ``log_softmax``) is left whole rather
    than refused: the target chooses among the groups it can narrow."""
    channels = channel_spec(spec)
    blocked = [glob.escape(f"{producer}.weight") for group in channel_graph(model).groups
               if group.blockers and not group.feeds_output for producer in group.producers]
    channels = channels.model_copy(update={"exclude": [*channels.exclude, *blocked]})
    return prepare(model, channels, spec.architecture, spec.seed)


def unreachable(target: TargetSpec, trials: list[TargetTrial], name: str, bound: float,
                dense_accuracy: float, final: float | None = None,
                final_value: float | None = None) -> EngineError:
    """The failure, naming the closest candidate on each side of the frontier (and, when
    the chosen one missed after its full fine-tune, ``final``: its accuracy, and
    ``final_value``: its constraint)."""
    meeting = [t for t in trials if t.meets_constraint]
    within = [t for t in trials if t.within_drop]
    sides = [] if final is None else [
        f"the chosen candidate reached {final:.4f} on validation after the full fine-tune "
        f"(drop {dense_accuracy - final:.4f}"
        + ("" if final_value is None else f", {name} {final_value:g}") + ")"]
    if meeting:
        best = max(meeting, key=lambda t: t.val_accuracy)
        sides.append(f"the most accurate candidate meeting {name} <= {bound:g} reached "
                     f"{best.val_accuracy:.4f} on validation ({name} {best.constraint_value:g}"
                     f", drop {dense_accuracy - best.val_accuracy:.4f})")
    if within:
        cheapest = min(within, key=lambda t: t.constraint_value)
        sides.append(f"the cheapest candidate within the drop has {name} "
                     f"{cheapest.constraint_value:g} (validation {cheapest.val_accuracy:.4f})")
    if len(sides) == (final is not None):
        sides.append("no candidate met the constraint or stayed within the drop")
    return EngineError(
        JobErrorCode.TARGET_UNREACHABLE,
        f"no candidate meets {name} <= {bound:g} within a validation drop of "
        f"{target.max_accuracy_drop} from {dense_accuracy:.4f} after {len(trials)} "
        f"trial(s): {'; '.join(sides)}. Allow a larger max_accuracy_drop or bound, more "
        "search.max_trials, trial_images or finetune.epochs; every trial is in report.target.")
