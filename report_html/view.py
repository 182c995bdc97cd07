"""What the report page shows, read leniently from a report's JSON.

The page must render every report a service has stored: older ones, and newer ones whose
optional sections (``cost``, ``sensitivity``, ``search``, ``target``, ``shrink``, ``data``,
``warnings``, ``dataset``) this code may know only by their agreed shape. So each section is
read on its own: unknown fields are
ignored, a missing optional section is ``None``, and a section that does not parse is kept
as raw JSON for the page to show as such, instead of failing the whole page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, model_validator


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TensorRow(_View):
    name: str
    layer_kind: str = ""
    shape: list[int] = []
    elements: int
    zeros: int
    sparsity: float
    shape_before: list[int] | None = None  # shrink: the tensor's shape before / after removal
    shape_after: list[int] | None = None
    nm: list[int] | None = None  # semi_structured: [N, M]
    nm_exact: bool | None = None
    semi_structured_eligible: bool | None = None
    semi_structured_note: str | None = None


class Totals(_View):
    elements: int
    zeros: int
    sparsity: float


class Evaluation(_View):
    accuracy: float
    loss: float | None = None
    split: str | None = None


class ValidationAccuracy(_View):
    size: int | None = None  # images held out of MNIST train
    before: Evaluation
    after_finetune: Evaluation


class Accuracy(_View):
    before: Evaluation
    after_pruning: Evaluation
    after_finetune: Evaluation
    validation: ValidationAccuracy | None = None
    before_quantization: Evaluation | None = None  # quantize: after_finetune is quantised


class FileInfo(_View):
    format: str
    sha256: str
    bytes: int
    compressed_bytes: int | None = None


class Latency(_View):
    p50: float
    p90: float
    runs: int | None = None


class CostSide(_View):
    parameters: int
    nonzero_parameters: int
    flops: int
    effective_flops: int | None = None
    bytes: dict[str, int] = {}
    latency_ms: dict[str, Latency] = {}
    latency_method: str | None = None
    device: str | None = None


class Cost(_View):
    before: CostSide
    after: CostSide
    speedup: dict[str, float] | None = None


class SensitivityCurve(_View):
    name: str
    accuracy: list[float]


class Sensitivity(_View):
    split: str | None = None
    dense_accuracy: float | None = None
    amounts: list[float]
    tensors: list[SensitivityCurve]

    @model_validator(mode="after")
    def _one_accuracy_per_amount(self) -> Sensitivity:
        for curve in self.tensors:
            if len(curve.accuracy) != len(self.amounts):
                raise ValueError(f"{len(curve.accuracy)} accuracies for {len(self.amounts)} "
                                 f"amounts in tensor {curve.name!r}")
        return self


class Trial(_View):
    amount: float
    val_accuracy: float
    test_accuracy: float | None = None
    seconds: float | None = None
    within_budget: bool | None = None
    amounts: dict[str, float] | None = None  # per_layer: each tensor's amount


class Search(_View):
    split: str | None = None
    max_accuracy_drop: float | None = None
    per_layer: bool | None = None
    dense_accuracy: float | None = None
    chosen_amount: float | None = None
    trials: list[Trial]


class TargetTrial(_View):
    strategy: str = ""
    widths: dict[str, int] = {}
    sparsity: float | None = None  # a compressed target's candidate: its sparsity and bits
    bits: int | None = None
    constraint_value: float
    meets_constraint: bool | None = None
    val_accuracy: float
    test_accuracy: float | None = None
    within_drop: bool | None = None
    met: bool | None = None
    seconds: float | None = None


class Target(_View):
    split: str | None = None
    constraint: str
    bound: float
    dense_value: float | None = None
    detail: str | None = None
    max_accuracy_drop: float | None = None
    dense_accuracy: float | None = None
    trials: list[TargetTrial]
    chosen: int | None = None
    final_value: float | None = None
    final_val_accuracy: float | None = None


class SplitSource(_View):
    images: int
    source: str


class Data(_View):
    validation_from: str | None = None
    train: SplitSource | None = None
    validation: SplitSource | None = None
    test: SplitSource


class ShrinkGroup(_View):
    producers: list[str] = []
    channels_before: int | None = None
    channels_after: int | None = None
    pruned: bool | None = None
    reason: str | None = None


class Shrink(_View):
    architecture: str | None = None
    widths: dict[str, int] = {}
    scoring: str | None = None
    groups: list[ShrinkGroup] = []
    parameters_before: int | None = None
    parameters_after: int | None = None


class DatasetUsed(_View):
    name: str
    sha256: str | None = None
    shape: list[int] = []
    classes: int | None = None
    train: int | None = None
    validation: int | None = None
    test: int | None = None
    validation_from: str | None = None
    figures_from: str | None = None


# Each section the page knows, and how to read it. Order: the order the page shows them.
_SECTIONS: dict[str, TypeAdapter[Any]] = {
    "tensors": TypeAdapter(list[TensorRow]),
    "targeted": TypeAdapter(Totals),
    "all_parameters": TypeAdapter(Totals),
    "accuracy": TypeAdapter(Accuracy),
    "timings_s": TypeAdapter(dict[str, float]),
    "cost": TypeAdapter(Cost),
    "sensitivity": TypeAdapter(Sensitivity),
    "search": TypeAdapter(Search),
    "target": TypeAdapter(Target),
    "shrink": TypeAdapter(Shrink),
    "data": TypeAdapter(Data),
    "warnings": TypeAdapter(list[str]),
    "dataset": TypeAdapter(DatasetUsed),
    "input": TypeAdapter(FileInfo),
    "output": TypeAdapter(FileInfo),
}
_SCALARS = ("device", "torch_version", "seed", "report_version")


@dataclass(frozen=True)
class ReportView:
    """A report as the page shows it; ``unreadable`` holds the sections that did not parse
    (name -> pretty JSON), ``spec_json`` the applied spec as pretty JSON."""

    tensors: list[TensorRow] | None = None
    targeted: Totals | None = None
    all_parameters: Totals | None = None
    accuracy: Accuracy | None = None
    timings_s: dict[str, float] | None = None
    cost: Cost | None = None
    sensitivity: Sensitivity | None = None
    search: Search | None = None
    target: Target | None = None
    shrink: Shrink | None = None
    data: Data | None = None
    warnings: list[str] | None = None
    dataset: DatasetUsed | None = None
    input: FileInfo | None = None
    output: FileInfo | None = None
    scalars: dict[str, str] = field(default_factory=dict)
    spec_json: str | None = None
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def any_shape_change(self) -> bool:
        return any(t.shape_after is not None for t in self.tensors or [])

    @property
    def any_nm(self) -> bool:
        return any(t.nm is not None for t in self.tensors or [])


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def read_report(raw: Any) -> ReportView:
    """The report's JSON (as parsed: a dict) -> what the page shows."""
    if not isinstance(raw, dict):
        return ReportView(unreadable={"report": _pretty(raw)})
    parsed: dict[str, Any] = {}
    unreadable: dict[str, str] = {}
    for name, adapter in _SECTIONS.items():
        if raw.get(name) is None:
            continue
        try:
            parsed[name] = adapter.validate_python(raw[name])
        except ValidationError:
            unreadable[name] = _pretty(raw[name])
    scalars = {k: str(raw[k]) for k in _SCALARS if raw.get(k) is not None}
    spec = _pretty(raw["spec"]) if raw.get("spec") is not None else None
    return ReportView(**parsed, scalars=scalars, spec_json=spec, unreadable=unreadable)


def read_report_json(text: str | bytes) -> ReportView:
    try:
        raw = json.loads(text)
    except ValueError:
        return ReportView(unreadable={"report": text if isinstance(text, str) else
                                      text.decode("utf-8", "replace")})
    return read_report(raw)
