"""Pruning semantics: exact counts, deterministic ties, structured slices, global threshold."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from core.jobs.spec import Method, PruningSpec, Scope
from worker.engine import methods, pruning, scripting
from worker.engine.methods import PruningError


def _zeros(mask: torch.Tensor) -> int:
    return int((mask == 0).sum())


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.25, 0.3, 0.5, 0.999])
def test_l1_layerwise_zeroes_round_amount_times_n(amount: float) -> None:
    w = torch.randn(37, 53, generator=torch.Generator().manual_seed(1))
    mask = methods.l1_unstructured(w, amount)
    k = round(amount * w.numel())
    assert _zeros(mask) == k
    # The pruned entries are the k smallest magnitudes: every kept |w| >= every pruned |w|.
    if 0 < k < w.numel():
        assert w.abs()[mask == 1].min() >= w.abs()[mask == 0].max()


def test_l1_matches_torch_prune_on_distinct_values() -> None:
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    layer = nn.Linear(32, 64)
    with torch.no_grad():
        layer.weight.copy_(w)
    prune.l1_unstructured(layer, "weight", amount=0.37)
    assert torch.equal(methods.l1_unstructured(w, 0.37), layer.weight_mask)


def test_ties_are_broken_by_index_order() -> None:
    w = torch.tensor([1.0, -1.0, 1.0, 2.0, 1.0, -1.0, 0.5])
    mask = methods.l1_unstructured(w, 3)  # 0.5, then the first two of the five |1.0|s
    assert mask.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert torch.equal(mask, methods.l1_unstructured(w.clone(), 3))


def test_all_equal_tensor_prunes_exact_count() -> None:
    w = torch.ones(1000)
    mask = methods.l1_unstructured(w, 0.3)
    assert _zeros(mask) == 300
    assert mask[:300].sum() == 0 and mask[300:].sum() == 700


def test_absolute_count_and_too_large_count() -> None:
    w = torch.randn(10, 10)
    assert _zeros(methods.l1_unstructured(w, 37)) == 37
    assert _zeros(methods.l1_unstructured(w, 100)) == 100
    with pytest.raises(PruningError, match="exceeds its 100"):
        methods.l1_unstructured(w, 101)


def test_random_unstructured_exact_and_seeded() -> None:
    w = torch.randn(50, 40)
    m1 = methods.random_unstructured(w, 0.42, torch.Generator().manual_seed(7))
    m2 = methods.random_unstructured(w, 0.42, torch.Generator().manual_seed(7))
    m3 = methods.random_unstructured(w, 0.42, torch.Generator().manual_seed(8))
    assert _zeros(m1) == round(0.42 * 2000)
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)


@pytest.mark.parametrize("n", [1, 2, "inf", "fro"])
def test_ln_structured_zeroes_lowest_norm_slices(n: int | str) -> None:
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(3))
    mask = methods.ln_structured(w, 0.5, n=n, dim=0)  # type: ignore[arg-type]
    ord_ = float("inf") if n == "inf" else 2 if n == "fro" else n
    norms = torch.linalg.vector_norm(w.reshape(16, -1), ord=ord_, dim=1)
    pruned = (mask.reshape(16, -1) == 0).all(dim=1)
    kept = (mask.reshape(16, -1) == 1).all(dim=1)
    assert int(pruned.sum()) == 8 and bool((pruned | kept).all())  # whole slices only
    assert norms[kept].min() >= norms[pruned].max()
    layer = nn.Conv2d(8, 16, 3)
    with torch.no_grad():
        layer.weight.copy_(w)
    prune.ln_structured(layer, "weight", amount=0.5, n=ord_, dim=0)
    assert torch.equal(mask, layer.weight_mask)


def test_structured_along_dim_1_and_bad_dim() -> None:
    w = torch.randn(6, 10)
    mask = methods.ln_structured(w, 3, n=1, dim=1)
    assert int((mask == 0).all(dim=0).sum()) == 3 and _zeros(mask) == 18
    mask = methods.random_structured(w, 0.5, dim=-1, generator=torch.Generator().manual_seed(0))
    assert int((mask == 0).all(dim=0).sum()) == 5
    with pytest.raises(PruningError, match="dim 2 is out of range"):
        methods.ln_structured(w, 0.5, dim=2)
    with pytest.raises(PruningError, match="exceeds its 6"):
        methods.random_structured(w, 7, dim=0)


def test_global_one_threshold_across_tensors() -> None:
    a = torch.arange(1, 101, dtype=torch.float32).reshape(10, 10)  # 1..100
    b = torch.arange(101, 201, dtype=torch.float32).reshape(4, 25) * -1  # |.| 101..200
    masks = methods.global_masks(methods.L1Unstructured(), [a, b], 0.6)
    assert _zeros(masks[0]) == 100 and _zeros(masks[1]) == 20  # 120 smallest of 200
    assert masks[1].flatten()[:20].sum() == 0 and masks[1].flatten()[20:].sum() == 80


def test_global_matches_torch_global_unstructured() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    weights = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    prune.global_unstructured(
        [(model[0], "weight"), (model[2], "weight")], prune.L1Unstructured, amount=0.45
    )
    ours = methods.global_masks(methods.L1Unstructured(), weights, 0.45)
    assert torch.equal(ours[0], model[0].weight_mask) and torch.equal(ours[1], model[2].weight_mask)


def test_twenty_million_element_tensor() -> None:
    # torch.quantile refuses > 2**24 elements; exact counts must still hold here.
    w = torch.randn(20_000_000, generator=torch.Generator().manual_seed(5))
    mask = methods.l1_unstructured(w, 0.3)
    assert _zeros(mask) == 6_000_000
    pruned_max = w.abs()[mask == 0].max()
    assert w.abs()[mask == 1].min() >= pruned_max
    masks = methods.global_masks(methods.L1Unstructured(), [w[:12_000_000], w[12_000_000:]], 0.3)
    assert sum(_zeros(m) for m in masks) == 6_000_000
    assert torch.equal(torch.cat(masks), mask)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(20, 30)
        self.fc2 = nn.Linear(30, 10)


def test_default_targets_are_linear_and_conv_weights() -> None:
    targets = pruning.find_targets(_Net(), PruningSpec())
    assert [(t.name, t.layer_kind) for t in targets] == [
        ("conv.weight", "Conv2d"), ("fc1.weight", "Linear"), ("fc2.weight", "Linear")
    ]
    scripted = scripting.script(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)))
    assert [(t.name, t.layer_kind) for t in pruning.find_targets(scripted, PruningSpec())] == [
        ("0.weight", "Linear"), ("2.weight", "Linear")
    ]


def test_include_exclude_and_overrides() -> None:
    torch.manual_seed(0)
    net = _Net()
    spec = PruningSpec(
        scope=Scope.GLOBAL, amount=0.5, include=["fc*", "conv.weight"], exclude=["fc2.bias"],
        overrides={"fc1.bias": 7, "conv.*": 0.25},
    )
    targets = pruning.find_targets(net, spec)
    assert [t.name for t in targets] == [
        "conv.weight", "fc1.weight", "fc1.bias", "fc2.weight"
    ]
    masks = pruning.compute_masks(targets, spec)
    assert _zeros(masks["conv.weight"]) == round(0.25 * 216)  # override, on its own
    assert _zeros(masks["fc1.bias"]) == 7  # override as a count
    # fc1.weight and fc2.weight share one global threshold over their 900 entries.
    assert _zeros(masks["fc1.weight"]) + _zeros(masks["fc2.weight"]) == 450
    pruning.apply_masks(targets, masks)
    rows = {r.name: r for r in pruning.tensor_reports(targets, spec)}
    assert rows["fc1.bias"].zeros == 7 and rows["conv.weight"].zeros == 54
    assert int((net.bn.weight == 0).sum()) == 0 and int((net.fc2.bias == 0).sum()) == 0


def test_layerwise_each_tensor_exact() -> None:
    net = _Net()
    spec = PruningSpec(scope=Scope.LAYERWISE, amount=0.3)
    masks = pruning.compute_masks(pruning.find_targets(net, spec), spec)
    assert {k: _zeros(m) for k, m in masks.items()} == {
        "conv.weight": round(0.3 * 216), "fc1.weight": 180, "fc2.weight": 90
    }


def test_structured_spec_is_layerwise_and_reports_slices() -> None:
    net = _Net()
    spec = pruning.effective_spec(PruningSpec(method=Method.LN_STRUCTURED, amount=0.5))
    assert spec.scope is Scope.LAYERWISE
    targets = pruning.find_targets(net, spec)
    pruning.apply_masks(targets, pruning.compute_masks(targets, spec))
    rows = pruning.tensor_reports(targets, spec)
    assert [(r.slices, r.slices_zeroed) for r in rows] == [(8, 4), (30, 15), (10, 5)]
    assert [r.zeros for r in rows] == [4 * 27, 15 * 20, 5 * 30]
