"""Schedules on a tiny model and synthetic data (no MNIST): formulas against hand-computed
values, exact final counts for every schedule x scope x method, and no revival."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.jobs.report import Progress
from core.jobs.spec import FinetuneSpec, JobSpec, PruningSpec
from worker.engine import pruning, training
from worker.engine.data import Split
from worker.engine.errors import Cancelled
from worker.engine.methods import amount_to_count
from worker.engine.schedules import (
    ScheduleRun,
    agp_sparsity,
    agp_window,
    iterative_sparsity,
    scaled_spec,
)


def test_agp_formula_hand_computed() -> None:
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with s_i 0.1, s_f 0.9, t0 10, t_end 50
    assert agp_sparsity(10, 10, 50, 0.1, 0.9) == pytest.approx(0.1)
    assert agp_sparsity(20, 10, 50, 0.1, 0.9) == pytest.approx(0.9 - 0.8 * 0.421875)  # 0.5625
    assert agp_sparsity(30, 10, 50, 0.1, 0.9) == pytest.approx(0.9 - 0.8 * 0.125)  # 0.8
    assert agp_sparsity(40, 10, 50, 0.1, 0.9) == pytest.approx(0.9 - 0.8 * 0.015625)  # 0.8875
    assert agp_sparsity(50, 10, 50, 0.1, 0.9) == 0.9
    assert agp_sparsity(99, 10, 50, 0.1, 0.9) == 0.9  # held after t_end
    assert agp_sparsity(0, 10, 50, 0.1, 0.9) == pytest.approx(0.1)  # held before t0
    assert agp_sparsity(30, 10, 50, 0.95, 0.5) == 0.5  # s_i above s_f: clamped, never drops


def test_iterative_formula_hand_computed() -> None:
    # 5 rounds to 0.968: remaining 0.032 ** (k/5) = 0.5 ** k  -> 0.5, 0.75, 0.875, 0.9375, 0.968
    assert [round(iterative_sparsity(k, 5, 0.96875), 6) for k in range(1, 6)] == [
        0.5, 0.75, 0.875, 0.9375, 0.96875]
    assert iterative_sparsity(3, 3, 0.9) == 0.9  # the last round is the amount itself


def test_lr_factor_hand_computed() -> None:
    spec = FinetuneSpec(lr_schedule="cosine", warmup_steps=4)
    assert [training.lr_factor(t, 104, spec) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert training.lr_factor(4, 104, spec) == 1.0
    assert training.lr_factor(54, 104, spec) == pytest.approx(0.5)  # half-way down the cosine
    assert training.lr_factor(4 + 25, 104, spec) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert training.lr_factor(104, 104, spec) == pytest.approx(0.0)
    assert training.lr_factor(50, 100, FinetuneSpec()) == 1.0  # constant: today's behaviour


def test_agp_window() -> None:
    from core.jobs.spec import Agp
    assert agp_window(Agp(kind="agp", start=0.1, end=0.75), 200) == (20, 150)
    assert agp_window(Agp(kind="agp", start=0.0, end=0.01), 10) == (0, 1)  # at least a step


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 10)
        self.conv = nn.Conv1d(1, 3, 3)  # a non-Linear target, 3-D weight
        self.fc2 = nn.Linear(30, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x)).unsqueeze(1)  # (N, 1, 10)
        h = torch.relu(self.conv(h)).flatten(1)  # (N, 24)
        return self.fc2(nn.functional.pad(h, (0, 6)))


def _data(n: int = 96) -> Split:
    g = torch.Generator().manual_seed(1)
    return Split(torch.randn(n, 12, generator=g), torch.randint(0, 10, (n,), generator=g))


SCHEDULES = [{"kind": "one_shot"}, {"kind": "iterative", "rounds": 3},
             {"kind": "agp", "start": 0.1, "end": 0.8, "every_steps": 2}]
METHODS = ["l1_unstructured", "random_unstructured", "ln_structured", "random_structured"]


def _run(pruning_spec: dict[str, object], optimizer: str = "adam",
         run_class: type[ScheduleRun] = ScheduleRun) -> tuple[Tiny, list[pruning.Target]]:
    torch.manual_seed(0)
    model = Tiny()
    spec = JobSpec.model_validate({"pruning": pruning_spec, "finetune": {
        "epochs": 2, "batch_size": 16, "optimizer": optimizer, "lr": 0.05}})
    applied = pruning.effective_spec(spec.pruning)
    targets = pruning.find_targets(model, applied)
    run_class(model, targets, applied, spec.finetune, _data(), seed=3).run()
    return model, targets


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: str(s["kind"]))
@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("method", METHODS)
def test_exact_final_counts(schedule: dict[str, object], scope: str, method: str) -> None:
    amount = 0.7
    _, targets = _run({"method": method, "scope": scope, "amount": amount,
                       "schedule": schedule, "overrides": {"fc2.*": 0.5}})
    zeros = {t.name: int((t.param == 0).sum()) for t in targets}
    assert zeros["fc2.weight"] == (150 if "unstructured" in method else 5 * 30)
    if "structured" in method and "unstructured" not in method:  # whole rows, layerwise
        for t in targets[:2]:
            rows = (t.param.detach().reshape(t.param.size(0), -1) == 0).all(1)
            assert int(rows.sum()) == amount_to_count(amount, t.param.size(0), t.name)
            assert zeros[t.name] == int(rows.sum()) * t.param[0].numel()
    elif scope == "global":
        assert zeros["fc1.weight"] + zeros["conv.weight"] == round(amount * (120 + 9))
    else:
        assert zeros["fc1.weight"] == round(amount * 120)
        assert zeros["conv.weight"] == round(amount * 9)


def test_semi_structured_one_shot_counts() -> None:
    _, targets = _run({"method": "semi_structured", "scope": "layerwise", "nm": [1, 4]})
    zeros = {t.name: int((t.param == 0).sum()) for t in targets}
    # fc1: rows of 12 -> 3 groups keep 1; conv: rows of 3 -> a partial group keeps 1;
    # fc2: rows of 30 -> 7 groups keep 1 + a partial group of 2 keeps 1.
    assert zeros == {"fc1.weight": 10 * 9, "conv.weight": 3 * 2, "fc2.weight": 10 * 22}


class _Watched(ScheduleRun):
    """Checks at every mask update that every weight pruned before is still exactly zero,
    i.e. that the optimizer steps in between did not revive one."""

    updates = 0

    def _prune(self, spec: PruningSpec) -> None:
        for target in self.targets:
            if target.name in self.masks:
                pruned = self.masks[target.name] == 0
                assert bool((target.param.detach()[pruned] == 0).all()), target.name
        before = {k: v.clone() for k, v in self.masks.items()}
        super()._prune(spec)
        for name, mask in before.items():  # a pruned unit stays pruned
            assert bool((self.masks[name][mask == 0] == 0).all()), name
        type(self).updates += 1


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("method", ["l1_unstructured", "random_unstructured", "ln_structured"])
def test_agp_never_revives(optimizer: str, method: str) -> None:
    _Watched.updates = 0
    schedule = {"kind": "agp", "start": 0.0, "end": 0.9, "every_steps": 1}
    _, targets = _run({"method": method, "scope": "layerwise", "amount": 0.8,
                       "schedule": schedule}, optimizer, _Watched)
    assert _Watched.updates >= 10  # the ramp did update the masks many times
    assert int((targets[0].param == 0).sum()) == (96 if "unstructured" in method else 8 * 12)


def test_scaled_spec_ramps_overrides() -> None:
    spec = PruningSpec(amount=0.8, overrides={"fc1.*": 0.4})
    half = scaled_spec(spec, lambda f: f / 2)
    assert (half.amount, half.overrides) == (0.4, {"fc1.*": 0.2})


def _progress_of(schedule: dict[str, object]) -> list[Progress]:
    seen: list[Progress] = []
    model = Tiny()
    spec = JobSpec.model_validate({"pruning": {"amount": 0.6, "schedule": schedule},
                                   "finetune": {"epochs": 1, "batch_size": 16}})
    targets = pruning.find_targets(model, spec.pruning)
    ScheduleRun(model, targets, spec.pruning, spec.finetune, _data(), seed=0,
                on_progress=seen.append).run()
    return seen


def test_rounds_and_pruning_steps_report_progress() -> None:
    rounds = [(p.round, p.rounds) for p in _progress_of({"kind": "iterative", "rounds": 3})
              if p.phase == "round"]
    assert rounds == [(1, 3), (2, 3), (3, 3)]
    steps = [p for p in _progress_of({"kind": "agp", "end": 1.0, "every_steps": 2})
             if p.phase == "pruning_step"]
    assert [p.step for p in steps] == [1, 3, 5]  # steps 0, 2, 4 of 6 (1-based in progress)
    assert [p.sparsity for p in steps] == sorted(p.sparsity or 0 for p in steps)


def test_cancel_stops_a_gradual_schedule_at_the_next_batch() -> None:
    calls = 0

    def cancel_after_three_batches() -> bool:
        nonlocal calls
        calls += 1
        return calls > 4

    model = Tiny()
    spec = JobSpec.model_validate({"pruning": {"amount": 0.6, "schedule": {"kind": "agp"}},
                                   "finetune": {"epochs": 5, "batch_size": 16}})
    targets = pruning.find_targets(model, spec.pruning)
    run = ScheduleRun(model, targets, spec.pruning, spec.finetune, _data(), seed=0,
                      should_cancel=cancel_after_three_batches)
    with pytest.raises(Cancelled):
        run.run()
    assert calls == 5  # asked once at the fine-tune's start, then before each batch
