"""The report a job produces (and the progress it shows while running). Plain pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.jobs.cost import CostReport
from core.jobs.formats import ModelFormat
from core.jobs.spec import JobSpec

REPORT_VERSION = 1

Phase = Literal["queued", "loading", "evaluating", "pruning", "finetuning", "saving", "done",
                "pruning_step", "round", "trial", "sensitivity", "target", "quantizing",
                "deploying"]
Split = Literal["validation", "test"]


def _unset(value: object) -> bool:
    return value is None


class Progress(BaseModel):
    phase: Phase
    epoch: int | None = None  # 1-based
    epochs: int | None = None
    step: int | None = None  # 1-based, within the epoch
    steps: int | None = None
    loss: float | None = None
    # Only present when set (the phases of schedules, search and sensitivity), so a plain
    # job's progress JSON is as before.
    round: int | None = Field(default=None, exclude_if=_unset)  # iterative: 1-based
    rounds: int | None = Field(default=None, exclude_if=_unset)
    trial: int | None = Field(default=None, exclude_if=_unset)  # search: 1-based
    trials: int | None = Field(default=None, exclude_if=_unset)
    sparsity: float | None = Field(default=None, exclude_if=_unset)  # this step's target
    tensor: str | None = Field(default=None, exclude_if=_unset)  # sensitivity: the tensor


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
    nm: list[int] | None = None  # semi_structured: [N, M]
    nm_exact: bool | None = None  # semi_structured: every full group of M keeps at most N
    semi_structured_eligible: bool | None = Field(
        default=None, description="semi_structured: whether torch.sparse."
        "to_sparse_semi_structured accepts this weight once it is on CUDA in float16/bfloat16 "
        "(2:4, 2-D, rows a multiple of 32, columns of 64). The kernels are GPU-only: no CPU "
        "speed-up is claimed.")
    semi_structured_note: str | None = None  # why (not) eligible
    shape_before: list[int] | None = None  # shrink: shape before channels were removed
    shape_after: list[int] | None = None  # shrink: shape of the returned (smaller) tensor
    # quantize: bits per stored code, and (kmeans) the codebook's entries; only when set
    bits: int | None = Field(default=None, exclude_if=_unset)
    codebook_size: int | None = Field(default=None, exclude_if=_unset)


class Totals(BaseModel):
    elements: int
    zeros: int
    sparsity: float


class Evaluation(BaseModel):
    accuracy: float  # fraction in [0, 1] over ``split``
    loss: float  # mean cross-entropy (NLL of log-softmax of the outputs)
    split: Split = "test"  # MNIST test split, or the validation images held out of train


class Accuracy(BaseModel):
    before: Evaluation
    after_pruning: Evaluation
    after_finetune: Evaluation
    delta_pruning: float  # after_pruning.accuracy - before.accuracy
    delta_total: float  # after_finetune.accuracy - before.accuracy
    validation: ValidationAccuracy | None = None  # the same figures on the validation split
    # quantize: after_finetune is the quantised model's (scored from its decoded compressed
    # file); this is the fine-tuned model's before quantisation. Only when set.
    before_quantization: Evaluation | None = Field(default=None, exclude_if=_unset)


class ValidationAccuracy(BaseModel):
    """Accuracy on the ``size`` validation images (``report.data.validation`` says which)."""

    size: int
    before: Evaluation
    after_finetune: Evaluation


class SplitSource(BaseModel):
    """Which images a split is: how many, and where they come from."""

    images: int
    source: str  # e.g. "MNIST test, the 5000 even-indexed images (0, 2, ..., 9998)"


class DataReport(BaseModel):
    """The images behind every figure: ``train`` is fine-tuned on, ``validation`` decides
    (and gives ``accuracy.validation``, sensitivity, search and target figures), ``test``
    gives ``accuracy.before/after_*`` and the trials' test accuracies, read by no decision."""

    validation_from: str  # the spec's finetune.validation_from
    train: SplitSource | None  # None: no fine-tuning
    validation: SplitSource | None  # None: the job decides nothing and no hold-out was asked
    test: SplitSource


class TensorSensitivity(BaseModel):
    name: str
    accuracy: list[float]  # validation accuracy with only this tensor pruned, one per amount


class Sensitivity(BaseModel):
    """Each targeted tensor pruned alone to each amount, no fine-tuning (validation split)."""

    split: Split = "validation"
    dense_accuracy: float
    amounts: list[float]
    tensors: list[TensorSensitivity]


class Trial(BaseModel):
    amount: float  # the global sparsity tried (per_layer: the overall targeted sparsity)
    val_accuracy: float  # decides (validation split)
    test_accuracy: float  # reported only, never looked at by the search
    seconds: float
    within_budget: bool
    amounts: dict[str, float] | None = None  # per_layer: the amount given to each tensor


class Search(BaseModel):
    split: Split = "validation"
    max_accuracy_drop: float
    per_layer: bool
    dense_accuracy: float  # validation
    chosen_amount: float
    trials: list[Trial]


class GroupCost(BaseModel):
    """One channel group with only it narrowed: the constraint as counted/measured, and the
    validation accuracy without fine-tuning (its sensitivity)."""

    group: str  # the group's producers, "+"-joined
    channels: int
    fractions: list[float]  # share of its channels removed
    constraint_values: list[float]  # one per fraction
    val_accuracy: list[float]  # one per fraction


class TargetTrial(BaseModel):
    """One explored candidate, short-fine-tuned: a channel count per group, or (a compressed
    bytes target) an unstructured sparsity and k-means bits."""

    strategy: str  # "sensitivity" (equal drop per unit of cost), "uniform", "mixed"; "kmeans"
    level: float  # the allocation's level in [0, 1]; kmeans: the sparsity
    widths: dict[str, int]  # channels kept per group (kmeans: none removed, empty)
    sparsity: float | None = None  # kmeans: share of the targeted weights zeroed
    bits: int | None = None  # kmeans: bits per weight code
    constraint_value: float  # counted, or measured on the job's device
    meets_constraint: bool
    val_accuracy: float  # after the short fine-tune; decides
    test_accuracy: float  # reported only, never read by the search
    within_drop: bool  # dense validation accuracy - val_accuracy <= max_accuracy_drop
    met: bool  # both
    seconds: float


class TargetReport(BaseModel):
    split: Split = "validation"
    constraint: str  # latency_ms, flops, parameters or bytes
    bound: float  # the constraint's absolute bound (max, or max_ratio x the dense value)
    dense_value: float  # the uploaded model's value
    detail: str  # batch size and device for latency, format for bytes
    max_accuracy_drop: float
    dense_accuracy: float  # validation
    candidates: Literal["channels", "sparsity_bits"] = "channels"  # what the search varied
    groups: list[GroupCost]  # channels: the per-group table; sparsity_bits: empty
    trials: list[TargetTrial]
    chosen: int | None  # index into trials; None: nothing met the constraint
    final_value: float | None = None  # the chosen model's constraint after the full fine-tune
    # (sparsity_bits: the compressed download's bytes, after the full fine-tune and quantisation)
    final_val_accuracy: float | None = None  # and its validation accuracy
    # sparsity_bits: the chosen one's sparsity once fitted to the bound after its full
    # fine-tune (its smallest remaining weights pruned until the file fits)
    final_sparsity: float | None = None


class FileInfo(BaseModel):
    format: ModelFormat
    sha256: str
    bytes: int
    compressed_bytes: int | None = Field(
        default=None, description="Size after zlib level 6: what the sparsity saves on the wire."
    )


class CompressedReport(BaseModel):
    """The ``compressed`` download against the dense fp32 state_dict's tensor bytes."""

    bytes: int
    dense_fp32_bytes: int  # 4 bytes per element of every state_dict tensor
    ratio: float  # dense_fp32_bytes / bytes


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


class DatasetUsed(BaseModel):
    """Which data the job's figures come from (absent in reports from before datasets: MNIST)."""

    name: str  # mnist, fashion_mnist, kmnist, or the uploaded dataset's id
    sha256: str | None = None  # an uploaded dataset's file
    shape: list[int]  # one sample as fed: [channels, height, width]
    classes: int
    train: int  # samples fine-tuned on
    validation: int  # samples decisions (sensitivity, search) are made on
    test: int  # samples of the test split (0: the dataset has none)
    validation_from: Literal["file", "held_out", "test_half", "none"]  # where decisions come from
    figures_from: Split  # the split accuracy.before/after_* are measured on


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
    cost: CostReport | None = None  # measured by the worker (core/jobs/cost.py)
    shrink: ShrinkReport | None = None  # pruning.shrink: channels physically removed
    sensitivity: Sensitivity | None = None
    search: Search | None = None
    target: TargetReport | None = None  # the target search: frontier and chosen point
    data: DataReport | None = None  # the images behind each figure
    warnings: list[str] = Field(default_factory=list)  # e.g. a memorised validation split
    compressed: CompressedReport | None = Field(default=None, exclude_if=_unset)
    dataset: DatasetUsed | None = None
