"""Measure what a model costs: parameters, FLOPs per image, file bytes, latency.

- FLOPs: one image through the model under a TorchDispatchMode that applies
  ``torch.utils.flop_counter``'s own formulas (``flop_registry``) to every op they cover, so
  the dense figure equals ``FlopCounterMode``'s (a test checks it). For the same ops it also
  counts the *effective* FLOPs: the dense FLOPs times the density of each operand that is a
  model parameter (the weight of a matmul or convolution), i.e. what remains if every multiply
  by a zero weight were skipped. Information only: dense kernels skip nothing.
- Latency: on the job's device, in ``eval()`` under ``inference_mode``, on a fixed random
  batch of 1 and of 256 images: ``WARMUP_RUNS`` untimed runs, then up to ``TIMED_RUNS`` timed
  ones, each bracketed by ``torch.cuda.synchronize`` on CUDA; p50/p90 by nearest rank. It runs
  in every job, twice (before and after), so the warm-up and the timed runs of each batch size
  each stop after ``BUDGET_S`` seconds (at least 1 warm-up and ``MIN_RUNS`` timed runs): about
  8 s per job at most for models whose forward pass takes under ~0.3 s, and the number of
  timed runs is reported. When the model came out physically smaller (shrink), the speedup
  must not depend on how busy the machine was at the start versus the end of the job: both
  models are then timed again at the end, in alternation (``measure_latencies``), and those
  figures replace the two sequential ones.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from core.jobs.cost import Cost, CostReport, Latency
from core.jobs.formats import ModelFormat
from core.jobs.spec import InputSpec

BATCHES = (1, 256)
WARMUP_RUNS = 3
TIMED_RUNS = 30
MIN_RUNS = 3
BUDGET_S = 1.0  # per batch size, timed runs only

# Operands of each counted op whose zeros a sparse kernel could skip (the two factors).
_FACTORS: dict[str, tuple[int, int]] = {"addmm": (1, 2), "baddbmm": (1, 2)}
_DEFAULT_FACTORS = (0, 1)  # mm, bmm, matmul, convolution (input, weight), ...


class _FlopCount(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Dense and effective FLOPs of every op ``flop_registry`` knows."""

    def __init__(self, parameters: set[int]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.parameters = parameters  # storage data pointers of the model's parameters
        self.dense = 0
        self.effective = 0.0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            self.dense += flops
            self.effective += flops * self._weight_density(func, args)
        return out

    def _weight_density(self, func: Any, args: tuple[Any, ...]) -> float:
        density = 1.0
        for i in _FACTORS.get(func._overloadpacket.__name__, _DEFAULT_FACTORS):
            operand = args[i] if i < len(args) else None
            if (
                isinstance(operand, torch.Tensor)
                and operand.numel()
                and operand.untyped_storage().data_ptr() in self.parameters
            ):
                density *= int(torch.count_nonzero(operand)) / operand.numel()
        return density


def warm_up() -> None:
    """Enter a dispatch mode once. The first entry in a process imports torch._dynamo (~3 s,
    ~70 MB here): the worker's standby process pays it while it waits for a job."""
    with _FlopCount(set()):
        torch.ones(1) + 1


Sample = tuple[int, ...]  # one input as the job feeds it, e.g. (1, 28, 28), (784,), (3, 32, 32)


def example_batch(spec: InputSpec, batch: int, device: torch.device,
                  sample: Sample | None = None) -> torch.Tensor:
    """A fixed random batch shaped as the job feeds its data: ``sample`` per image, by
    default as the spec's input block says: (N, 1, 28, 28), (N, 784), (N, 3, 32, 32)..."""
    sample = sample or spec.shape
    shape = (batch, *sample)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(device)


def count_flops(model: nn.Module, spec: InputSpec, device: torch.device,
                sample: Sample | None = None) -> tuple[int, int]:
    """(dense, effective) FLOPs of one image."""
    pointers = {p.untyped_storage().data_ptr() for p in model.parameters()}
    counter = _FlopCount(pointers)
    image = example_batch(spec, 1, device, sample)  # made outside the mode (randn in it is slow)
    # no_grad, not inference_mode: under inference_mode linear reaches the dispatcher whole,
    # and flop_registry only knows the addmm/mm it decomposes into.
    with _evaluating(model, torch.no_grad()), counter:
        model(image)
    return counter.dense, round(counter.effective)


class _evaluating:  # noqa: N801 - used as a context manager, like torch.no_grad
    """eval() and no autograd (inference_mode by default) for the block; the training flag
    is restored after."""

    def __init__(self, model: nn.Module, grad_mode: Any = None) -> None:
        self.model, self.was_training = model, model.training
        self.inference = grad_mode if grad_mode is not None else torch.inference_mode()

    def __enter__(self) -> None:
        self.model.eval()
        self.inference.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.inference.__exit__(None, None, None)
        self.model.train(self.was_training)


def _percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the runs at or below it."""
    return sorted_ms[max(0, math.ceil(q * len(sorted_ms)) - 1)]


def time_runs(run: Callable[[], object], device: torch.device) -> Latency:
    return time_alternating([run], device)[0]


def time_alternating(runs: Sequence[Callable[[], object]], device: torch.device) -> list[Latency]:
    """Each callable timed, in rounds of one run each (the order reversed every other round),
    so a change in the machine's load falls on all of them alike: what a speedup of one model
    over another is computed from. Warm-up and timed rounds each stop after ``BUDGET_S`` per
    callable (at least one warm-up round and ``MIN_RUNS`` timed ones)."""
    def timed(run: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1000

    budget = BUDGET_S * len(runs)
    warm_start = time.perf_counter()
    for _ in range(WARMUP_RUNS):  # at least one; a slow model stops warming after the budget
        for run in runs:
            timed(run)
        if time.perf_counter() - warm_start > budget:
            break
    times: list[list[float]] = [[] for _ in runs]
    started = time.perf_counter()
    rounds = 0
    while rounds < TIMED_RUNS and (rounds < MIN_RUNS or time.perf_counter() - started < budget):
        order = range(len(runs)) if rounds % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            times[i].append(timed(runs[i]))
        rounds += 1
    return [Latency(p50=_percentile(sorted(ms), 0.5), p90=_percentile(sorted(ms), 0.9),
                    runs=len(ms)) for ms in times]


def latency_at(model: nn.Module, spec: InputSpec, device: torch.device, batch: int,
               sample: Sample | None = None) -> Latency:
    """Latency of one batch size (the target's), timed as ``measure_latency`` times each."""
    return latencies_at([model], spec, device, batch, sample)[0]


def latencies_at(models: Sequence[nn.Module], spec: InputSpec, device: torch.device,
                 batch: int, sample: Sample | None = None) -> list[Latency]:
    """Latency of each model at one batch size, on the same batch, timed in alternation."""
    images = example_batch(spec, batch, device, sample)
    with contextlib.ExitStack() as stack:
        for model in models:
            stack.enter_context(_evaluating(model))
        return time_alternating([functools.partial(m, images) for m in models], device)


def measure_latency(model: nn.Module, spec: InputSpec, device: torch.device,
                    sample: Sample | None = None) -> dict[str, Latency]:
    return measure_latencies([model], spec, device, sample)[0]


def measure_latencies(
    models: Sequence[nn.Module], spec: InputSpec, device: torch.device,
    sample: Sample | None = None,
) -> list[dict[str, Latency]]:
    """Latency per batch size of each model on the same batches, timed in alternation."""
    latency: list[dict[str, Latency]] = [{} for _ in models]
    with contextlib.ExitStack() as stack:
        for model in models:
            stack.enter_context(_evaluating(model))
        for batch in BATCHES:
            images = example_batch(spec, batch, device, sample)
            timed = time_alternating([functools.partial(m, images) for m in models], device)
            for per_model, measured in zip(latency, timed, strict=True):
                per_model[f"batch_{batch}"] = measured
    return latency


def paired_method(device: torch.device) -> str:
    return (latency_method(device).replace("per batch size", "per batch size and model")
            + "; timed in alternation with the other model (before vs after) at the end of "
            "the job, one run of each per round")


def latency_method(device: torch.device) -> str:
    sync = ", torch.cuda.synchronize before and after each run" if device.type == "cuda" else ""
    return (
        f"eval() + inference_mode on {device}, fixed random input; {WARMUP_RUNS} warm-up runs "
        f"(fewer past {BUDGET_S:g} s), then up to {TIMED_RUNS} timed runs (at least {MIN_RUNS}, "
        f"stopping after {BUDGET_S:g} s) per batch size, perf_counter around each forward{sync}; "
        f"p50/p90 by nearest rank; torch threads: {torch.get_num_threads()}"
    )


def measure(
    model: nn.Module, spec: InputSpec, device: torch.device, device_label: str,
    file_bytes: dict[str, int], sample: Sample | None = None,
) -> Cost:
    """The cost of ``model`` as it is now (on ``device``, fed ``sample``-shaped inputs)."""
    params = list(model.parameters())
    dense, effective = count_flops(model, spec, device, sample)
    return Cost(
        parameters=sum(p.numel() for p in params),
        nonzero_parameters=sum(int(torch.count_nonzero(p)) for p in params),
        flops=dense,
        effective_flops=effective,
        bytes=file_bytes,
        latency_ms=measure_latency(model, spec, device, sample),
        latency_method=latency_method(device),
        device=device_label,
    )


def file_bytes(outputs: dict[ModelFormat, Path]) -> dict[str, int]:
    return {fmt.value: path.stat().st_size for fmt, path in outputs.items()}


def bytes_as_saved(
    model: nn.Module, save_all: Callable[[nn.Module, Path], dict[ModelFormat, Path]],
    device: torch.device, parent: Path | None = None,
) -> dict[str, int]:
    """Sizes of every format ``model`` would be written in now (written to a scratch folder
    under ``parent``, then deleted). ``save_all`` moves the model to the CPU in eval mode: on
    the CPU that is undone here; on another device a copy is saved, so no tensor anyone holds
    (a shrink plan, say) is moved under it."""
    was_training = model.training
    if device.type != "cpu":
        model = copy.deepcopy(model)
    made_parent = parent is not None and not parent.exists()
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="cost-", dir=parent) as scratch:
            return file_bytes(save_all(model, Path(scratch)))
    finally:
        model.to(device).train(was_training)
        if made_parent and parent is not None:
            parent.rmdir()  # a job that stops before saving leaves no output folder


def report(before: Cost, after: Cost) -> CostReport:
    """before and after, with speedups only when the model came out physically smaller."""
    speedup = None
    if after.parameters < before.parameters:
        speedup = {
            key: before.latency_ms[key].p50 / after.latency_ms[key].p50
            for key in after.latency_ms
            if key in before.latency_ms and after.latency_ms[key].p50 > 0
        }
    return CostReport(before=before, after=after, speedup=speedup)
