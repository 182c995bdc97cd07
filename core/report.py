"""The report a job produces (and the progress it shows while running). Plain pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.cost import CostReport
from core.formats import ModelFormat
from core.spec import JobSpec

REPORT_VERSION = 1

Phase = Literal["queued", "loading", "evaluating", "pruning", "finetuning", "saving", "done"]


class Progress(BaseModel):
    phase: Phase
    epoch: int | None = None  # 1-based
    epochs: int | None = None
    step: int | None = None  # 1-based, within the epoch
    steps: int | None = None
    loss: float | None = None


class TensorReport(BaseModel):
    name: str  # parameter name, e.g. "fc1.weight"
    layer_kind: str  # "Linear", "Conv2d", ...
    shape: list[int]
    elements: int
    zeros: int
    sparsity: float  # zeros / elements
    dim: int | None = None  # structured: the dimension pruned along
    slices: int | None = None  # structured: slices along dim
    slices_zeroed: int | None = None  # structured: slices that are entirely zero
    shape_before: list[int] | None = None  # shrink: shape before channels were removed
    shape_after: list[int] | None = None  # shrink: shape of the returned (smaller) tensor


class Totals(BaseModel):
    elements: int
    zeros: int
    sparsity: float


class Evaluation(BaseModel):
    accuracy: float  # fraction in [0, 1] over the MNIST test split
    loss: float  # mean cross-entropy (NLL of log-softmax of the outputs)


class Accuracy(BaseModel):
    before: Evaluation
    after_pruning: Evaluation
    after_finetune: Evaluation
    delta_pruning: float  # after_pruning.accuracy - before.accuracy
    delta_total: float  # after_finetune.accuracy - before.accuracy


class FileInfo(BaseModel):
    format: ModelFormat
    sha256: str
    bytes: int
    compressed_bytes: int | None = Field(
        default=None, description="Size after zlib level 6: what the sparsity saves on the wire."
    )


class ShrinkGroup(BaseModel):
    """Channels removed together: the outputs of ``producers`` meet (residual add) or one
    layer's outputs alone."""

    producers: list[str]  # module paths, e.g. ["stem", "layer1.conv2"]
    channels_before: int
    channels_after: int
    pruned: bool
    reason: str | None = None  # why a group was kept whole
    tensors: list[str]  # every tensor sliced by this group's channels


class ShapeChange(BaseModel):
    name: str
    shape_before: list[int]
    shape_after: list[int]


class ShrinkReport(BaseModel):
    """pruning.shrink: what was physically removed. ``widths`` rebuild a registry
    architecture (see /v1/architectures/{name}); for TorchScript, every Conv/Linear's new
    output width."""

    architecture: str | None
    widths: dict[str, int]
    scoring: str  # the group scoring rule applied
    groups: list[ShrinkGroup]
    tensors: list[ShapeChange]  # every tensor whose shape changed
    parameters_before: int
    parameters_after: int


class Report(BaseModel):
    report_version: int = REPORT_VERSION
    spec: JobSpec  # as applied
    tensors: list[TensorReport]
    targeted: Totals  # over the targeted tensors
    all_parameters: Totals  # over every parameter of the model
    accuracy: Accuracy
    timings_s: dict[str, float]  # phase -> seconds: load, evaluate, prune, finetune, save, total
    device: str  # e.g. "cpu" or "NVIDIA H200"
    torch_version: str
    seed: int
    input: FileInfo
    output: FileInfo
    cost: CostReport | None = None  # measured by the worker (core/cost.py)
    shrink: ShrinkReport | None = None  # pruning.shrink: channels physically removed
