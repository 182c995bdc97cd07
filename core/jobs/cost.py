"""``report.cost``: what the model costs before and after pruning, measured by the worker.

Plain pydantic (the API and web page read it without torch). The engine fills it in
``worker/engine/measure.py``; the fields are documented in docs/engine.md ("The cost").
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Latency(BaseModel):
    p50: float  # milliseconds per forward pass of the whole batch
    p90: float
    runs: int  # timed runs the percentiles come from (after the warm-up)


class Cost(BaseModel):
    parameters: int  # every parameter's elements (buffers excluded)
    nonzero_parameters: int
    flops: int = Field(description="Dense FLOPs per image (a multiply-add counts 2), by "
                       "torch.utils.flop_counter's formulas: convolutions and matmuls.")
    effective_flops: int = Field(
        description="FLOPs left when every multiply by a zero weight is skipped: information "
        "only. Dense kernels skip nothing, so unstructured zeros make no model faster; "
        "latency_ms is what the model costs."
    )
    bytes: dict[str, int]  # format -> file size, e.g. {"safetensors": 943101, ...}
    latency_ms: dict[str, Latency]  # "batch_1", "batch_256"
    latency_method: str
    device: str  # where latency was measured: "cpu", "NVIDIA H200", ...


class RuntimeCost(BaseModel):
    """A deployable model made by the job (spec.deploy), run where it will run: its test
    accuracy, and its CPU latency timed in alternation with the PyTorch model it came from
    (``reference_latency_ms``), so the two compare under the same load."""

    runtime: str  # e.g. "onnxruntime 1.32.0 CPUExecutionProvider", "torchao 0.18.0 int8"
    available: bool
    reason: str | None = None  # why not available, e.g. "onnx_unavailable: ..."
    accuracy: float | None = None  # MNIST test split
    accuracy_delta: float | None = None  # accuracy - the PyTorch model's
    bytes: int | None = None
    latency_ms: dict[str, Latency] = Field(default_factory=dict)
    reference_latency_ms: dict[str, Latency] = Field(default_factory=dict)
    # what reference_latency_ms timed: the PyTorch model, or (onnx_int8) the fp32 ONNX file
    reference: str = "pytorch"
    device: str = "cpu"


class CostReport(BaseModel):
    before: Cost  # the model as uploaded
    after: Cost  # the model as downloaded
    speedup: dict[str, float] | None = Field(
        default=None,
        description="before.p50 / after.p50 per batch size, only when the model came out "
        "physically smaller (fewer parameters); null when only zeros changed.",
    )
    runtimes: dict[str, RuntimeCost] | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="spec.deploy: 'onnx', 'onnx_int8' and 'int8' models, scored and timed "
        "in the job.")
