"""Masks hold through fine-tuning: after every optimizer step, pruned entries are exactly 0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.spec import FinetuneSpec, Optimizer, PruningSpec
from worker.engine import pruning, training
from worker.engine.data import Split
from worker.engine.errors import EngineError


def _tiny_split(n: int = 512) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


class _CheckingHold(training.MaskHold):
    """Counts, after every step, the pruned entries that are non-zero, so a single revived
    weight at any step fails the test. ``enforce=False`` is the control: it holds nothing."""

    def __init__(self, params: list[torch.Tensor], masks: list[torch.Tensor], enforce: bool):
        super().__init__(params, masks)
        self.enforce = enforce
        self.steps = 0
        self.revived = 0

    def before_step(self) -> None:
        if self.enforce:
            super().before_step()

    def after_step(self) -> None:
        if self.enforce:
            super().after_step()
        self.steps += 1
        for p, m in zip(self.params, self.masks, strict=True):
            self.revived += int((p[m == 0] != 0).sum())


def _pruned_mlp(
    hidden: int, amount: float
) -> tuple[nn.Module, list[pruning.Target], dict[str, torch.Tensor]]:
    """A 784-hidden-10 MLP pruned globally by L1 to ``amount``: (model, targets, masks)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    spec = PruningSpec(amount=amount)
    targets = pruning.find_targets(model, spec)
    masks = pruning.compute_masks(targets, spec)
    pruning.apply_masks(targets, masks)
    return model, targets, masks


def _run(optimizer: Optimizer, weight_decay: float, enforce: bool) -> tuple[int, int, nn.Module]:
    model, targets, masks = _pruned_mlp(64, 0.5)
    hold = _CheckingHold([t.param for t in targets], [masks[t.name] for t in targets], enforce)
    ft = FinetuneSpec(epochs=2, optimizer=optimizer, lr=1e-2, batch_size=32,
                      weight_decay=weight_decay)
    training.finetune(model, _tiny_split(), ft, hold, seed=0)
    return hold.steps, hold.revived, model


@pytest.mark.parametrize(
    ("optimizer", "weight_decay"),
    [(Optimizer.ADAM, 0.0), (Optimizer.ADAM, 0.01), (Optimizer.SGD, 0.0), (Optimizer.SGD, 0.01)],
)
def test_masks_hold_after_every_step(optimizer: Optimizer, weight_decay: float) -> None:
    steps, revived, model = _run(optimizer, weight_decay, enforce=True)
    assert steps == 2 * 16  # 512 samples / batch 32, two epochs
    assert revived == 0
    # Exactly half of each weight matrix is zero at the end (global 50% over both).
    zeros = sum(int((m.weight == 0).sum()) for m in model if isinstance(m, nn.Linear))
    assert zeros == (784 * 64 + 64 * 10) // 2


@pytest.mark.parametrize("optimizer", [Optimizer.ADAM, Optimizer.SGD])
def test_control_without_hold_revives_weights(optimizer: Optimizer) -> None:
    # Proves the check above can fail: the same training without the hold revives weights.
    steps, revived, _ = _run(optimizer, 0.0, enforce=False)
    assert steps == 32 and revived > 0


def test_optimizer_state_stays_zero_at_pruned_entries() -> None:
    model, targets, masks = _pruned_mlp(32, 0.7)
    hold = training.MaskHold([t.param for t in targets], [masks[t.name] for t in targets])
    params = list(model.parameters())
    opt = training.make_optimizer(params, FinetuneSpec(lr=1e-2, weight_decay=0.1))
    images, labels = _tiny_split(64).images, _tiny_split(64).labels
    for _ in range(5):
        opt.zero_grad()
        training.loss_fn(model(images), labels).backward()  # type: ignore[no-untyped-call]
        hold.before_step()
        opt.step()
        hold.after_step()
    for t in targets:
        state = opt.state[t.param]
        pruned = masks[t.name] == 0
        assert int((state["exp_avg"][pruned] != 0).sum()) == 0
        assert int((state["exp_avg_sq"][pruned] != 0).sum()) == 0
        assert int((t.param[pruned] != 0).sum()) == 0


def test_evaluate_restores_training_mode() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    split = _tiny_split(100)
    model.train()
    result = training.evaluate(model, split)
    assert model.training and 0.0 <= result.accuracy <= 1.0
    with torch.no_grad():
        expected = (model(split.images).argmax(1) == split.labels).sum().item() / 100
    assert result.accuracy == expected
    model.eval()
    training.evaluate(model, split)
    assert not model.training


def test_divergence_is_an_invalid_spec() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.fill_(float("inf"))
    spec = FinetuneSpec(epochs=1, optimizer=Optimizer.SGD, lr=10.0, batch_size=256)
    with pytest.raises(EngineError) as info:
        training.finetune(model, _tiny_split(), spec, training.MaskHold([], []), seed=0)
    assert info.value.code == JobErrorCode.INVALID_SPEC and "finetune.lr" in info.value.message
