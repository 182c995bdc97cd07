"""The pruning spec: plain, versioned data, validated once, importable without torch.

The reference recipe, as a spec::

    {"architecture": "mnist_mlp",
     "pruning": {"method": "l1_unstructured", "scope": "global", "amount": 0.3},
     "finetune": {"epochs": 2}}

Unknown fields are refused (``extra="forbid"``), so a typo never silently falls back to a
default, and a field added by a later spec version is refused by an older service instead of
being ignored. New features arrive as new members/fields under ``version`` 1 when they stay
backwards compatible (``schedule`` kinds ``agp`` and ``iterative``, the ``semi_structured``
method, ``analysis`` and ``search``), or as ``version`` 2 when they don't. Combinations that
cannot work are refused here, located at the field to change (see ``field_error``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from core.jobs.formats import SAME_FORMAT, ModelFormat
from core.jobs.spec_options import DEFAULT_TARGET_TRIALS, MAX_TARGET_TRIALS, SpecModel
from core.jobs.spec_options import AnalysisSpec as AnalysisSpec
from core.jobs.spec_options import AugmentSpec as AugmentSpec
from core.jobs.spec_options import DataSpec as DataSpec
from core.jobs.spec_options import DeploySpec as DeploySpec
from core.jobs.spec_options import DistillSpec as DistillSpec
from core.jobs.spec_options import InputSpec as InputSpec
from core.jobs.spec_options import LimitsSpec as LimitsSpec
from core.jobs.spec_options import QuantizeSpec as QuantizeSpec
from core.jobs.spec_options import SearchSpec as SearchSpec
from core.jobs.spec_options import SensitivitySpec as SensitivitySpec
from core.jobs.spec_options import TargetSpec as TargetSpec
from core.jobs.spec_pruning import Agp as Agp
from core.jobs.spec_pruning import Amount as Amount
from core.jobs.spec_pruning import Iterative as Iterative
from core.jobs.spec_pruning import Method as Method
from core.jobs.spec_pruning import OneShot as OneShot
from core.jobs.spec_pruning import PruningSpec as PruningSpec
from core.jobs.spec_pruning import Schedule as Schedule
from core.jobs.spec_pruning import Scope as Scope
from core.jobs.spec_pruning import check_amount as check_amount
from core.jobs.spec_pruning import field_error as field_error
from core.tenants.accounts import Notify

SPEC_VERSION = 1


class ValidationFrom(StrEnum):
    TEST_HALF = "test_half"  # even-indexed MNIST test images decide, odd-indexed are reported
    TRAIN = "train"  # a seeded hold-out of MNIST train (the upload trained without it)


class Optimizer(StrEnum):
    ADAM = "adam"
    SGD = "sgd"


class FinetuneSpec(SpecModel):
    """Training on MNIST after pruning, with the pruned weights held at exactly zero."""

    epochs: int = Field(default=2, ge=0, le=100, description="0: prune and evaluate only.")
    optimizer: Optimizer = Field(default=Optimizer.ADAM, description="sgd: with `momentum`.")
    lr: float = Field(default=1e-3, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD only.")
    batch_size: int = Field(default=64, ge=1, le=65536)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="cosine: from lr down to 0 over the fine-tune's steps "
        "(over each round's steps for the iterative schedule).")
    warmup_steps: int = Field(default=0, ge=0, le=1_000_000,
                              description="Steps of linear warm-up from 0 to lr.")
    validation_from: ValidationFrom = Field(
        default=ValidationFrom.TEST_HALF,
        description="Where the images that decide (sensitivity, search, target) come from. "
        "test_half: the 5000 even-indexed MNIST test images decide and the 5000 odd-indexed "
        "ones give the reported test figures (images the upload never trained on, whatever "
        "part of MNIST train it saw); a job that decides nothing has no validation split, "
        "fine-tunes on all 60000 train images and reports the whole test split. train: "
        "`validation_size` images held out of MNIST train, for an upload trained without "
        "them (the whole test split is then reported).")
    validation_size: int = Field(
        default=5000, ge=0, le=30_000,
        description="validation_from train only: MNIST train images held out (seeded by "
        "`seed`) for validation, never trained on. 0: train on all 60000 (no validation "
        "figures; sensitivity, search and target need a validation split).")
    distill: DistillSpec | None = Field(
        default=None, description="Distil from the uploaded dense model while fine-tuning "
        "(its outputs on the training images, computed once before pruning; with `augment`, "
        "on each augmented batch, from a copy of the dense model kept beside).")
    augment: AugmentSpec | None = Field(
        default=None, description="Random translations of the training images (fine-tuning "
        "and the quantisation fine-tune); validation and test images are never augmented.")


_OUTPUT_FORMATS = (SAME_FORMAT, *(f.value for f in ModelFormat if f.uploadable))
_EXPECTED_OUTPUT = (  # pydantic's own wording for an enum: 'a', 'b' or 'c'
    ", ".join(f"'{v}'" for v in _OUTPUT_FORMATS[:-1]) + f" or '{_OUTPUT_FORMATS[-1]}'"
)


def _output_format(value: object) -> Literal["same"] | ModelFormat:
    """One error naming every choice (a plain union would report one per member)."""
    if value == SAME_FORMAT:
        return SAME_FORMAT
    if isinstance(value, str) and value in _OUTPUT_FORMATS:
        return ModelFormat(value)  # an uploadable format: the job writes it as its primary
    raise PydanticCustomError(
        "enum", "Input should be {expected}", {"expected": _EXPECTED_OUTPUT}
    )


# A model format, or "same": the format the model was uploaded in. One flat string enum in
# the JSON schema, as clients have always seen it.
OutputFormat = Annotated[
    Literal["same"] | ModelFormat,
    PlainValidator(_output_format),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"title": "OutputFormat", "type": "string", "enum": list(_OUTPUT_FORMATS)}),
]


# Named recipes (`JobSpec.recipe`): the block fields each fills in where the spec leaves them
# out. Measured on LeNet-300-100 and LeNet-5 at 95% (docs/deep-compression.md#measured).
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "high_sparsity": {
        "pruning": {"schedule": {"kind": "agp", "end": 0.5, "every_steps": 100}},
        "finetune": {"epochs": 20, "lr": 1e-3, "lr_schedule": "cosine", "batch_size": 128,
                     "augment": {"shift": 2}},
    },
}


class JobSpec(SpecModel):
    """Everything a pruning job needs besides the model file."""

    version: Literal[1] = 1  # SPEC_VERSION
    recipe: Literal["high_sparsity"] | None = Field(
        default=None, description="A named recipe filling in the `pruning` and `finetune` "
        "fields the spec leaves out (the spec's own fields win, a whole field at a time). "
        "high_sparsity, for amounts of 0.9 and more: agp schedule (end 0.5, every 100 "
        "steps), 20 epochs, cosine lr 1e-3, batch 128, augment shift 2 "
        "(docs/sparsity.md#named-recipes-recipe).")
    architecture: str | None = Field(
        default=None,
        max_length=64,
        description="Registry architecture a state_dict/safetensors upload is loaded into; "
        "not needed for TorchScript.",
    )
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    input: InputSpec = Field(default_factory=InputSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda|cuda:\d{1,2})$",
        description="auto: the worker's device (CUDA when present).",
    )
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    output_format: OutputFormat = SAME_FORMAT
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    analysis: AnalysisSpec | None = Field(
        default=None, description="sensitivity: per-tensor scan on the validation split.")
    search: SearchSpec | None = Field(
        default=None, description="Accuracy-budget search over pruning.amount; beside a "
        "target, only its max_trials (the target's trial bound).")
    target: TargetSpec | None = Field(
        default=None, description="Compress to a latency, FLOPs, parameter or size budget "
        "within an accuracy drop: a search over channel removal per group, or for the "
        "compressed download's size over unstructured sparsity and k-means bits "
        "(docs/targets.md).")
    quantize: QuantizeSpec | None = Field(
        default=None, description="Trained quantisation after fine-tuning (kmeans weight "
        "sharing or per-channel linear), the masks held.")
    deploy: DeploySpec | None = Field(
        default=None, description="ONNX and torchao int8 models, verified and timed in the "
        "job.")
    notify: Notify | None = Field(
        default=None, description="A signed webhook when the job ends (default: the "
        "tenant's, if set).")

    @model_validator(mode="before")
    @classmethod
    def _fill_in_recipe(cls, data: Any) -> Any:
        """The recipe's fields under the spec's own, block by block, one level deep: a
        spec's `pruning.schedule` replaces the recipe's whole schedule."""
        if not isinstance(data, dict) or data.get("recipe") not in RECIPES:
            return data  # no recipe, or an unknown one: the field's validation names it
        filled = dict(data)
        for block, fields in RECIPES[data["recipe"]].items():
            given = data.get(block, {})
            if isinstance(given, dict):  # a block passed as a model object is taken whole
                filled[block] = {**fields, **given}
        return filled

    @property
    def decides(self) -> bool:
        """Whether anything in the job is chosen on a validation split (sensitivity scan,
        search, target): such a job needs images the upload never trained on."""
        return self.search is not None or self.target is not None or (
            self.analysis is not None and self.analysis.sensitivity is not None)

    @model_validator(mode="after")
    def _combinations(self) -> JobSpec:
        if self.decides and self.finetune.validation_from is ValidationFrom.TRAIN \
                and self.finetune.validation_size == 0:
            raise field_error(("finetune", "validation_size"), "sensitivity and search decide "
                              "on a validation split: validation_size must be > 0 with "
                              "validation_from train")
        if self.finetune.distill is not None and self.finetune.epochs == 0:
            raise field_error(("finetune", "distill"), "distillation happens while "
                              "fine-tuning: epochs must be > 0")
        if self.pruning.schedule.kind == "agp" and self.finetune.epochs == 0:
            raise field_error(("finetune", "epochs"), "the agp schedule prunes during "
                              "fine-tuning: epochs must be > 0")
        if self.target is not None:
            self._check_target()
        if self.data.uploaded and (self.input.channels != 1 or self.input.size != 28):
            raise field_error(("input",), "input.channels and input.size reshape the MNIST "
                              "family's images; an uploaded dataset is fed at its own shape")
        if (self.quantize is not None and self.quantize.epochs > 0
                and self.finetune.epochs == 0):
            raise field_error(("quantize", "epochs"), "the quantised model is fine-tuned on "
                              "the training split: set finetune.epochs > 0 or "
                              "quantize.epochs 0")
        if self.search is not None and self.target is None:
            if self.pruning.method is Method.SEMI_STRUCTURED:
                raise field_error(("search",), "semi_structured has a fixed sparsity; there "
                                  "is nothing to search")
            if not isinstance(self.pruning.amount, float) or self.pruning.amount <= 0:
                raise field_error(("pruning", "amount"), "search: the upper bound must be a "
                                  "fraction in (0, 1)")
            if self.pruning.shrink:
                raise field_error(("pruning", "shrink"), "search trials are masked prunings; "
                                  "shrink a chosen amount in a job of its own")
            if self.search.per_layer and self.pruning.overrides:
                raise field_error(("pruning", "overrides"), "search.per_layer sets the "
                                  "per-tensor amounts itself")
        return self

    @property
    def target_trials(self) -> int:
        """A target's trial bound: ``search.max_trials`` (the issue's field), else the older
        ``target.max_trials``, else the default."""
        assert self.target is not None
        if self.search is not None:
            return self.search.max_trials
        return self.target.max_trials or DEFAULT_TARGET_TRIALS

    def _check_target(self) -> None:
        """A target chooses the method, amounts and schedule itself; a ``search`` beside it
        only bounds its trials."""
        assert self.target is not None
        if self.search is not None:
            self._check_target_search()
        if self.pruning.shrink:
            raise field_error(("pruning", "shrink"), "a target removes channels itself, "
                              "choosing how many per group: leave shrink false")
        if self.pruning.overrides:
            raise field_error(("pruning", "overrides"), "a target chooses the amount per "
                              "channel group itself")
        if self.target.quantized:
            self._check_compressed_target()
            return
        if self.pruning.schedule.kind != "one_shot":
            raise field_error(("pruning", "schedule", "kind"), "a target removes channels "
                              "once: leave the one_shot schedule")
        if self.pruning.method is Method.SEMI_STRUCTURED or (
                self.pruning.method.structured and self.pruning.dim != 0):
            raise field_error(("pruning", "method"), "a target removes output channels: "
                              "leave the method at its default or use ln_structured with "
                              "dim 0")

    def _check_target_search(self) -> None:
        assert self.search is not None and self.target is not None
        # by value, not by the fields given: a stored spec comes back with every default
        for name in ("max_accuracy_drop", "per_layer"):
            if getattr(self.search, name) != SearchSpec.model_fields[name].default:
                raise field_error(("search", name), "beside a target, search only bounds the "
                                  "trials (max_trials); the drop is target.max_accuracy_drop")
        if self.target.max_trials is not None:
            raise field_error(("target", "max_trials"), "give the trial bound once: "
                              "search.max_trials (target.max_trials is its older alias)")
        if self.search.max_trials > MAX_TARGET_TRIALS:
            raise field_error(("search", "max_trials"), f"a target tries at most "
                              f"{MAX_TARGET_TRIALS} candidates")

    def _check_compressed_target(self) -> None:
        """Unstructured sparsity and k-means bits: the method must be unstructured; a
        ``quantize`` block gives the chosen candidate's k-means settings, not its bits."""
        if self.pruning.method not in (Method.L1_UNSTRUCTURED, Method.RANDOM_UNSTRUCTURED):
            raise field_error(("pruning", "method"), "a compressed bytes target searches "
                              "unstructured sparsity and k-means bits: use l1_unstructured "
                              "(the default) or random_unstructured")
        if self.quantize is None:
            return
        if self.quantize.method != "kmeans":
            raise field_error(("quantize", "method"), "a compressed bytes target chooses "
                              "k-means bits: leave method kmeans")
        default = QuantizeSpec()
        for name in ("bits", "layer_bits", "overrides"):
            if getattr(self.quantize, name) != getattr(default, name):
                raise field_error(("quantize", name), "a compressed bytes target chooses "
                                  "the bits (target.quantize_bits lists the candidates): "
                                  "leave it at its default")


REFERENCE_RECIPE = JobSpec(
    architecture="mnist_mlp",
    pruning=PruningSpec(method=Method.L1_UNSTRUCTURED, scope=Scope.GLOBAL, amount=0.3),
    finetune=FinetuneSpec(epochs=2),
)
