"""Per-tensor sensitivity: each targeted tensor pruned alone, no fine-tuning, on validation.

``scan`` gives the classic per-layer sensitivity curves (validation accuracy against amount).
``allocate`` turns them into per-tensor amounts for an overall sparsity, by the *equal-drop*
rule: every tensor is pruned up to the amount at which its own standalone validation-accuracy
drop reaches one common level delta, and delta is chosen (by bisection) so that the pruned
elements add up to the requested overall sparsity. Tensors whose accuracy barely moves are so
pruned much harder than sensitive ones. The curves are piecewise linear through (0, 0), the
scanned points (drop made non-decreasing by a running maximum) and (1, the drop to chance
accuracy 0.1), with a 1e-6 * amount tie-breaker so that flat stretches still order the tensors
and the allocation hits the requested sparsity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.jobs.error_codes import JobErrorCode
from core.jobs.report import Progress, Sensitivity, TensorSensitivity
from core.jobs.spec import Method, PruningSpec, Scope
from worker.engine import pruning, training
from worker.engine.data import Split
from worker.engine.errors import Cancelled, EngineError
from worker.engine.methods import PruningError

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]

CHANCE_ACCURACY = 0.1  # ten classes
TIE_BREAK = 1e-6
MAX_AMOUNT = 0.999  # an amount stays a fraction < 1


def scan_spec(spec: PruningSpec) -> PruningSpec:
    """The spec's method applied to one tensor at a time (N:M has no amount: L1 instead)."""
    method = Method.L1_UNSTRUCTURED if spec.method is Method.SEMI_STRUCTURED else spec.method
    return spec.model_copy(update={"method": method, "scope": Scope.LAYERWISE,
                                   "overrides": {}})


@torch.no_grad()
def scan(
    targets: list[pruning.Target], spec: PruningSpec, amounts: list[float], model: torch.nn.Module,
    validation: Split, *, seed: int, on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> Sensitivity:
    """Validation accuracy with only one tensor pruned to each amount; weights restored."""
    one = scan_spec(spec)
    generator = torch.Generator().manual_seed(seed)
    dense = training.evaluate(model, validation, should_cancel).accuracy
    rows = []
    for target in targets:
        saved = target.param.detach().clone()
        accuracies = []
        for amount in amounts:
            if should_cancel is not None and should_cancel():
                raise Cancelled()
            if on_progress is not None:
                on_progress(Progress(phase="sensitivity", tensor=target.name, sparsity=amount))
            try:
                masks = pruning.compute_masks(
                    [target], one.model_copy(update={"amount": amount}), generator)
            except PruningError as exc:
                raise EngineError(JobErrorCode.INVALID_SPEC, str(exc)) from exc
            pruning.apply_masks([target], masks)
            accuracies.append(training.evaluate(model, validation, should_cancel).accuracy)
            target.param.copy_(saved)
        rows.append(TensorSensitivity(name=target.name, accuracy=accuracies))
    return Sensitivity(dense_accuracy=dense, amounts=list(amounts), tensors=rows)


def _curve(sensitivity: Sensitivity, row: TensorSensitivity) -> list[tuple[float, float]]:
    """(amount, drop) points of one tensor: monotone, from (0, 0) to (1, drop to chance)."""
    points = [(0.0, 0.0)]
    worst = 0.0
    for amount, accuracy in zip(sensitivity.amounts, row.accuracy, strict=True):
        worst = max(worst, sensitivity.dense_accuracy - accuracy)
        points.append((amount, worst))
    points.append((1.0, max(worst, sensitivity.dense_accuracy - CHANCE_ACCURACY)))
    return [(a, d + TIE_BREAK * a) for a, d in points]


def _amount_at(curve: list[tuple[float, float]], delta: float) -> float:
    """The largest amount whose drop on the curve is at most ``delta``."""
    amount = 0.0
    for (a0, d0), (a1, d1) in zip(curve, curve[1:], strict=False):
        if d1 <= delta:
            amount = a1
            continue
        if d0 <= delta:
            amount = a0 + (delta - d0) / (d1 - d0) * (a1 - a0)
        break
    return min(amount, MAX_AMOUNT)


def allocate(
    sensitivity: Sensitivity, elements: dict[str, int], sparsity: float
) -> dict[str, float]:
    """Per-tensor amounts (equal-drop rule) whose element-weighted mean is ``sparsity``."""
    curves = {row.name: _curve(sensitivity, row) for row in sensitivity.tensors}
    total = sum(elements[name] for name in curves)

    def overall(delta: float) -> float:
        return sum(_amount_at(c, delta) * elements[n] for n, c in curves.items()) / total

    lo, hi = 0.0, max(c[-1][1] for c in curves.values())
    for _ in range(60):  # overall() is non-decreasing in delta
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if overall(mid) < sparsity else (lo, mid)
    return {name: round(_amount_at(c, hi), 6) for name, c in curves.items()}
