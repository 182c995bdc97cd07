"""N:M semi-structured masks: the exact pattern, odd shapes, and the GPU-kernel eligibility."""

from __future__ import annotations

import pytest
import torch

from core.jobs.spec import PruningSpec
from worker.engine import pruning
from worker.engine.nm import kernel_eligibility, nm_mask, pattern_holds


def test_two_of_four_keeps_the_largest_per_group() -> None:
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 2.0, -1.0, 0.0]])
    assert nm_mask(w, 2, 4).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]


def test_ties_keep_the_lower_index() -> None:
    assert nm_mask(torch.ones(1, 4), 2, 4).tolist() == [[1, 1, 0, 0]]


@pytest.mark.parametrize("shape", [(5, 7), (3, 2, 3, 3), (1, 3), (8, 10), (6, 16)])
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (3, 8)])
def test_pattern_exact_on_odd_shapes(shape: tuple[int, ...], nm: tuple[int, int]) -> None:
    """In-dim not a multiple of M: full groups keep exactly N, the last partial group of r
    weights keeps min(N, r) (documented in worker/engine/nm.py)."""
    n, m = nm
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    mask = nm_mask(w, n, m)
    assert mask.shape == w.shape
    rows = mask.reshape(shape[0], -1)
    width = rows.size(1)
    full = width - width % m
    kept = rows[:, :full].reshape(shape[0], -1, m).sum(-1) if full else torch.zeros(0)
    assert bool((kept == n).all())
    if full < width:
        assert rows[:, full:].sum(-1).tolist() == [min(n, width - full)] * shape[0]
    assert pattern_holds(w * mask, n, m)
    # the kept weights are the largest of their group
    groups = (w.abs() * mask).reshape(shape[0], -1)[:, :full].reshape(shape[0], -1, m)
    dropped = (w.abs() * (1 - mask)).reshape(shape[0], -1)[:, :full].reshape(shape[0], -1, m)
    if full:
        kept_min = groups.masked_fill(groups == 0, float("inf")).min(-1).values
        assert bool((kept_min >= dropped.max(-1).values).all())


def test_pattern_holds_detects_a_violation() -> None:
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0, 0.0]])  # 3 of the first 4 kept
    assert not pattern_holds(w, 2, 4)
    assert not pattern_holds(torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0]]), 1, 4)


def test_kernel_eligibility_follows_to_sparse_semi_structured_rules() -> None:
    assert kernel_eligibility(torch.zeros(64, 128), 2, 4).eligible
    assert not kernel_eligibility(torch.zeros(64, 100), 2, 4).eligible  # cols % 64
    assert not kernel_eligibility(torch.zeros(10, 128), 2, 4).eligible  # rows % 32
    assert not kernel_eligibility(torch.zeros(64, 128), 1, 4).eligible  # only 2:4
    assert not kernel_eligibility(torch.zeros(32, 1, 8, 8), 2, 4).eligible  # conv: 4-D
    note = kernel_eligibility(torch.zeros(64, 128), 2, 4).note
    assert "CUDA" in note and "no CPU speed-up" in note


def test_report_rows_say_eligibility_per_tensor() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 10))
    spec = PruningSpec(method="semi_structured", scope="layerwise")
    targets = pruning.find_targets(model, spec)
    pruning.apply_masks(targets, pruning.compute_masks(targets, spec))
    rows = pruning.tensor_reports(targets, spec)
    assert [(r.nm, r.nm_exact, r.semi_structured_eligible) for r in rows] == [
        ([2, 4], True, True), ([2, 4], True, False)]  # 10 rows: not a multiple of 32
    assert [r.zeros for r in rows] == [64 * 64, 10 * 32]
