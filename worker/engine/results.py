"""The result objects of a job's phases: what each phase hands to the next.

``run_job`` (``pipeline.py``) passes them along; ``phases.py`` and ``strategies.py`` make them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from core.jobs.cost import Cost, RuntimeCost
from core.jobs.formats import ModelFormat
from core.jobs.report import (
    DataReport,
    DatasetUsed,
    Evaluation,
    FileInfo,
    Search,
    ShrinkReport,
    TargetReport,
    TensorReport,
    ValidationAccuracy,
)
from core.jobs.spec import PruningSpec, QuantizeSpec
from worker.engine import pruning, shrink
from worker.engine.data import Split
from worker.engine.deep_compression import annotate
from worker.engine.loading import LoadedModel
from worker.engine.pruning import Target
from worker.engine.quantize import QuantizedTensor


@dataclass
class Upload:
    """The uploaded model on the job's device, what will be pruned, and the shrink plan."""

    path: Path
    loaded: LoadedModel
    model: nn.Module
    pruning: PruningSpec  # the spec's pruning with its defaults resolved
    targets: list[Target]
    shrinking: shrink.Prepared | None  # planned before any work, so a refusal comes first
    primary: ModelFormat  # the spec's output_format, "same" resolved to the upload's
    target_groups: shrink.Prepared | None = None  # target: the channel groups, analysed early


@dataclass
class Splits:
    test: Split  # the reported figures' images: test (a half of it when the job decides)
    train: Split | None  # None: no fine-tuning
    validation: Split | None  # what decisions are judged on; None: nothing decides
    sources: DataReport  # which images each split is, for the report
    used: DatasetUsed  # which dataset, its shape, classes and split sizes

    @property
    def sample(self) -> tuple[int, ...]:
        """One input as fed: (C, H, W), or (C * H * W,) flattened."""
        return tuple(self.test.images.shape[1:])


@dataclass
class Dense:
    """The uploaded model as it came: its cost and accuracy."""

    cost: Cost
    test: Evaluation
    validation: Evaluation | None
    sample: tuple[int, ...]  # the input shape the cost was measured with (the data's)


@dataclass
class Tuned:
    """Accuracy after fine-tuning: the test split, and validation beside the dense model's."""

    test: Evaluation  # spec.quantize: the quantised model's, from its decoded file
    validation: ValidationAccuracy | None
    before_quantization: Evaluation | None = None  # spec.quantize: the fine-tuned model's
    compressed_bytes: int | None = None  # quantised: the compressed download's size


@dataclass
class Costs:
    before: Cost
    after: Cost  # its bytes are counted once the files are written


@dataclass
class Saved:
    outputs: dict[ModelFormat, Path]
    primary: ModelFormat
    input: FileInfo
    output: FileInfo
    runtimes: dict[str, RuntimeCost] | None = None  # spec.deploy: ONNX, int8


@dataclass
class Pruned:
    """The model after the pruning strategy and its fine-tuning, with what the report needs."""

    model: nn.Module
    pruning: PruningSpec  # as applied (a search's chosen trial)
    after_pruning: Evaluation  # test split, right after the (first) pruning
    targets: list[Target] = field(default_factory=list)  # masked tensors, if any
    shrunk_rows: list[TensorReport] | None = None  # shrink: the rows as masked, with shapes
    search: Search | None = None
    shrink: ShrinkReport | None = None
    target: TargetReport | None = None
    dense_twin: nn.Module | None = None  # shrink: the speedup is timed against it
    quantized: dict[str, QuantizedTensor] | None = None  # spec.quantize: tables by tensor
    quantize: QuantizeSpec | None = None  # a compressed target's chosen bits (else the spec's)

    def rows(self) -> list[TensorReport]:
        """Per targeted tensor: its zeros counted in the weights as they are now."""
        rows = (self.shrunk_rows if self.shrunk_rows is not None
                else pruning.tensor_reports(self.targets, self.pruning))
        return annotate(rows, self.quantized or {})
