"""report.cost: FLOPs against hand counts, effective FLOPs of sparse weights, latency stats,
bytes, and the speedup rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.jobs.cost import Cost, Latency
from core.jobs.formats import ModelFormat
from core.jobs.spec import InputSpec
from worker.engine import measure as cost
from worker.engine import registry, saving, scripting

CPU = torch.device("cpu")

# LeNet-5 by hand, multiply-adds per image (FLOPs = 2 x MACs; biases, ReLU, pooling not counted):
# conv1 6x28x28 outputs x (1x5x5)   = 117 600
# conv2 16x10x10 outputs x (6x5x5)  = 240 000
# fc1 400 x 120 = 48 000; fc2 120 x 84 = 10 080; fc3 84 x 10 = 840
LENET5_MACS = 117_600 + 240_000 + 48_000 + 10_080 + 840


def test_lenet5_flops_equal_the_hand_count_and_flop_counter_mode() -> None:
    model = registry.build("lenet5")
    dense, effective = cost.count_flops(model, InputSpec(), CPU)
    assert dense == 2 * LENET5_MACS == 833_040
    assert effective == dense  # no zero weights yet
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1, 28, 28))
    assert counter.get_total_flops() == dense


def test_scripted_and_traced_models_count_the_same() -> None:
    model = registry.build("lenet5").eval()
    with torch.no_grad():
        model.conv2.weight.zero_()  # its 2 x 240 000 FLOPs are all multiplies by zero
    scripted = scripting.script(model)
    traced = torch.jit.trace(model, torch.randn(1, 1, 28, 28))
    for module in (model, scripted, traced):
        assert cost.count_flops(module, InputSpec(), CPU) == (833_040, 833_040 - 480_000)


def test_effective_flops_scale_with_each_weights_density() -> None:
    model = registry.build("mnist_mlp")
    with torch.no_grad():
        model.fc1.weight[:, :392] = 0  # half of fc1
        model.fc3.weight.zero_()  # all of fc3
    dense, effective = cost.count_flops(model, InputSpec(flatten=True), CPU)
    fc1, fc2, fc3 = 2 * 784 * 256, 2 * 256 * 128, 2 * 128 * 10
    assert dense == fc1 + fc2 + fc3
    assert effective == fc1 // 2 + fc2


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert cost._percentile(values, 0.5) == 5.0
    assert cost._percentile(values, 0.9) == 9.0
    assert cost._percentile([3.0], 0.9) == 3.0


def test_latency_runs_are_bounded_by_count_and_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    quick = cost.time_runs(lambda: calls.append(1), CPU)
    assert quick.runs == cost.TIMED_RUNS and len(calls) == cost.WARMUP_RUNS + cost.TIMED_RUNS
    assert 0 <= quick.p50 <= quick.p90
    monkeypatch.setattr(cost, "BUDGET_S", 0.0)
    calls.clear()
    slow = cost.time_runs(lambda: calls.append(1), CPU)
    assert slow.runs == cost.MIN_RUNS  # past the budget: the minimum, never fewer
    assert len(calls) == 1 + cost.MIN_RUNS  # and a single warm-up run


def test_paired_timing_alternates_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    a, b = cost.time_alternating([lambda: order.append("a"), lambda: order.append("b")], CPU)
    assert a.runs == b.runs == cost.TIMED_RUNS
    timed = order[2 * cost.WARMUP_RUNS:]
    assert len(timed) == 2 * cost.TIMED_RUNS
    rounds = [timed[i:i + 2] for i in range(0, len(timed), 2)]
    assert rounds == [["a", "b"], ["b", "a"]] * (cost.TIMED_RUNS // 2)  # order swapped
    monkeypatch.setattr(cost, "BUDGET_S", 0.0)
    a, b = cost.time_alternating([lambda: None, lambda: None], CPU)
    assert a.runs == b.runs == cost.MIN_RUNS


def test_paired_timing_tells_a_slower_model_from_a_faster_one() -> None:
    fast, slow = nn.Linear(64, 64), nn.Sequential(*[nn.Linear(64, 64) for _ in range(20)])
    spec = InputSpec(flatten=True)
    first = nn.Sequential(nn.Linear(784, 64), slow)
    second = nn.Sequential(nn.Linear(784, 64), fast)
    slow_ms, fast_ms = cost.measure_latencies([first, second], spec, CPU)
    assert set(slow_ms) == set(fast_ms) == {"batch_1", "batch_256"}
    assert slow_ms["batch_256"].p50 > fast_ms["batch_256"].p50
    assert "alternation" in cost.paired_method(CPU)


def test_measure_fills_every_field(tmp_path: Path) -> None:
    model = registry.build("mnist_mlp")
    with torch.no_grad():
        model.fc1.weight[:128] = 0
    model.train()
    measured = cost.measure(model, InputSpec(), CPU, "cpu", {"safetensors": 1})
    assert measured.parameters == 235_146
    assert measured.nonzero_parameters == 235_146 - 128 * 784
    assert set(measured.latency_ms) == {"batch_1", "batch_256"}
    assert all(1 <= lat.runs <= cost.TIMED_RUNS for lat in measured.latency_ms.values())
    assert "3 warm-up runs" in measured.latency_method and measured.device == "cpu"
    assert model.training  # restored


def test_bytes_as_saved_writes_every_format_and_restores_the_model() -> None:
    model = registry.build("mnist_mlp").train()
    sizes = cost.bytes_as_saved(
        model, lambda m, folder: saving.save_all(m, ModelFormat.STATE_DICT, folder), CPU
    )
    assert set(sizes) == {"torchscript", "state_dict", "safetensors", "sparse_safetensors",
                          "pt2", "compressed"}
    assert sizes["safetensors"] > 4 * 235_146 and model.training
    # Dense weights gain nothing from the bitmask: the compact file stores them as they are.
    assert sizes["sparse_safetensors"] == pytest.approx(sizes["safetensors"], rel=0.01)


def _cost(parameters: int, p50: float) -> Cost:
    latency = {"batch_1": Latency(p50=p50, p90=p50, runs=3),
               "batch_256": Latency(p50=10 * p50, p90=10 * p50, runs=3)}
    return Cost(parameters=parameters, nonzero_parameters=parameters, flops=1,
                effective_flops=1, bytes={}, latency_ms=latency, latency_method="m",
                device="cpu")


def test_speedup_only_when_the_model_came_out_smaller() -> None:
    assert cost.report(_cost(100, 2.0), _cost(100, 1.0)).speedup is None  # zeros only
    smaller = cost.report(_cost(100, 2.0), _cost(60, 1.0))
    assert smaller.speedup == {"batch_1": 2.0, "batch_256": 2.0}
