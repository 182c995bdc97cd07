"""The parts of a job spec beside pruning and fine-tuning's own fields: how MNIST is fed, the
job's own limits, distillation, the sensitivity scan, the accuracy-budget search and the target.
``core/jobs/spec.py`` assembles them into ``JobSpec`` (and re-exports them, so
``from core.jobs.spec import InputSpec`` works)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.datasets.record import BUILTIN_DATASETS, DEFAULT_DATASET, is_dataset_id
from core.jobs.formats import ModelFormat


class SpecModel(BaseModel):
    """Every spec block: unknown fields refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SensitivitySpec(SpecModel):
    amounts: list[float] = Field(
        default_factory=lambda: [0.5, 0.7, 0.8, 0.9, 0.95, 0.98], min_length=1, max_length=50,
        description="Amounts each targeted tensor is pruned to, alone and without fine-tuning.")

    @field_validator("amounts")
    @classmethod
    def _amounts(cls, value: list[float]) -> list[float]:
        for a in value:
            if not 0.0 <= a < 1.0:
                raise ValueError(f"each amount must be in [0, 1), got {a}")
        return sorted(set(value))


class AnalysisSpec(SpecModel):
    sensitivity: SensitivitySpec | None = None


class SearchSpec(SpecModel):
    """Find the highest sparsity whose fine-tuned validation accuracy stays within
    ``max_accuracy_drop`` of the dense model's; ``pruning.amount`` is the upper bound."""

    max_accuracy_drop: float = Field(default=0.005, ge=0, lt=1)
    max_trials: int = Field(default=6, ge=1, le=50)
    per_layer: bool = Field(
        default=False, description="Allocate the sparsity per tensor from a sensitivity scan "
        "(equal standalone accuracy drop per tensor) instead of one global threshold.")


class DistillSpec(SpecModel):
    """Knowledge distillation from the uploaded (dense) model during fine-tuning (Hinton et
    al. 2015): loss = (1 - weight) * cross-entropy(labels)
    + weight * temperature**2 * KL(teacher || student) at ``temperature``."""

    weight: float = Field(default=0.5, gt=0, le=1,
                          description="Share of the distillation term in the loss.")
    temperature: float = Field(default=4.0, gt=0, le=100,
                               description="Softmax temperature of teacher and student.")


class AugmentSpec(SpecModel):
    """Random translations of the training images while fine-tuning: each image of each batch
    moved by its own whole-pixel offset, the uncovered border filled by repeating the edge
    pixels (background on MNIST). Validation and test images are never touched."""

    shift: int = Field(default=2, ge=1, le=8,
                       description="Largest offset in pixels, each axis: offsets drawn "
                       "uniformly from -shift..shift.")


class InputSpec(SpecModel):
    """How MNIST images are fed to the model: (N, channels, size, size) floats, normalised;
    by default (N, 1, 28, 28)."""

    mean: float = Field(default=0.1307, ge=-10, le=10)
    std: float = Field(default=0.3081, gt=0, le=10)
    flatten: bool = Field(default=False, description="Feed (N, 784) instead of (N, 1, 28, 28).")
    channels: Literal[1, 3] = Field(
        default=1, description="3: the grey channel replicated to three, for a model built for "
        "RGB input (every torchvision classifier).")
    size: int = Field(
        default=28, ge=8, le=256, description="Side of the square image fed: the 28 x 28 digits "
        "resized (bilinear), e.g. 32, 64, or 75 for Inception-v3.")

    @model_validator(mode="after")
    def _flatten_is_plain(self) -> InputSpec:
        if self.flatten and (self.channels != 1 or self.size != 28):
            raise ValueError("input.flatten feeds (N, 784): leave channels at 1 and size at 28")
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        """One image as fed: (784,) flattened, else (channels, size, size)."""
        return (784,) if self.flatten else (self.channels, self.size, self.size)


class LimitsSpec(SpecModel):
    """Bounds a pipeline sets on its own job; the server's settings cap them."""

    timeout_s: int | None = Field(
        default=None,
        ge=1,
        le=30 * 24 * 3600,
        description="Wall-clock seconds the job may run before it fails `timeout`; the "
        "server's job_soft_time_limit_s caps it. null: the server's limit.",
    )

    def wall_clock_s(self, server_limit_s: int) -> int:
        """The job's wall-clock limit: this spec's, capped by the server's."""
        if self.timeout_s is None:
            return server_limit_s
        return min(self.timeout_s, server_limit_s)


class Constraint(SpecModel):
    """One bound: an absolute ``max`` or ``max_ratio`` of the uploaded model's own value."""

    max: float | None = Field(default=None, gt=0, description="Absolute bound (ms, FLOPs "
                              "per image, parameters or bytes).")
    max_ratio: float | None = Field(default=None, gt=0, lt=1, description="Bound as a "
                                    "fraction of the uploaded model's value, in (0, 1).")

    @model_validator(mode="after")
    def _one_bound(self) -> Constraint:
        if (self.max is None) == (self.max_ratio is None):
            raise ValueError("give exactly one of max (absolute) or max_ratio (a fraction of "
                             "the uploaded model's value)")
        return self

    def bound(self, dense: float) -> float:
        return self.max if self.max is not None else dense * (self.max_ratio or 0.0)


class LatencyConstraint(Constraint):
    batch: int = Field(default=1, ge=1, le=1024, description="Batch size the p50 latency "
                       "is measured at, on the worker that runs the job.")


class BytesConstraint(Constraint):
    format: str = Field(description="The download format whose file size is bounded.")

    @field_validator("format")
    @classmethod
    def _producible(cls, value: str) -> str:
        # the formats a job writes for every model (onnx and int8 are made only on request,
        # after the search); on "compressed" the search chooses unstructured sparsity and
        # k-means bits and measures the quantised file (docs/targets.md)
        formats = [f.value for f in ModelFormat if f.uploadable]
        if value not in formats:
            raise ValueError(f"a target search cannot measure format {value!r}: bytes "
                             f"targets bound one of {', '.join(formats)}")
        return value


TARGET_CONSTRAINTS = ("latency_ms", "flops", "parameters", "bytes")
DEFAULT_TARGET_TRIALS = 4
DEFAULT_QUANTIZE_BITS = (8, 6, 5, 4)
MAX_TARGET_TRIALS = 20


class TargetSpec(SpecModel):
    """Compress to a budget: exactly one constraint, and the validation accuracy the job may
    give up. The service searches channel removal per group (docs/targets.md)."""

    latency_ms: LatencyConstraint | None = Field(default=None, description="p50 milliseconds "
                                                 "per batch, measured on the job's device.")
    flops: Constraint | None = Field(default=None, description="Dense FLOPs per image, "
                                     "counted.")
    parameters: Constraint | None = Field(default=None, description="Parameter count.")
    bytes: BytesConstraint | None = Field(default=None, description="File size of `format`.")
    max_accuracy_drop: float = Field(default=0.005, ge=0, lt=1, description="Largest drop of "
                                     "validation accuracy from the uploaded model's.")
    max_trials: int | None = Field(
        default=None, ge=1, le=MAX_TARGET_TRIALS, description="Candidates short-fine-tuned and "
        f"scored on validation (default {DEFAULT_TARGET_TRIALS}). The older alias of "
        "`search.max_trials` (give `search: {\"max_trials\": n}` beside a target), still "
        "accepted; not both.")
    quantize_bits: list[int] = Field(
        default_factory=lambda: list(DEFAULT_QUANTIZE_BITS), min_length=1, max_length=8,
        description="A `compressed` bytes target only: the k-means bits tried, each at the "
        "lowest unstructured sparsity whose quantised file meets the bound.")
    trial_images: int = Field(default=6000, ge=0, le=60_000, description="Each candidate's "
                              "short fine-tune: one pass over this many train images; 0: "
                              "none (the chosen one gets `finetune.epochs`).")

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetSpec:
        given = [name for name in TARGET_CONSTRAINTS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one constraint of {', '.join(TARGET_CONSTRAINTS)}"
                             f" (got {', '.join(given) or 'none'})")
        # by value, not by the fields given: a stored spec comes back with every default
        if self.quantize_bits != list(DEFAULT_QUANTIZE_BITS) and not self.quantized:
            raise ValueError("quantize_bits are tried by a bytes target on the compressed "
                             "format only")
        return self

    @field_validator("quantize_bits")
    @classmethod
    def _bits(cls, value: list[int]) -> list[int]:
        for bits in value:
            if not 1 <= bits <= 8:
                raise ValueError(f"each of quantize_bits must be in 1..8, got {bits}")
        return sorted(set(value), reverse=True)

    @property
    def quantized(self) -> bool:
        """A bytes target on the compressed download: the search chooses unstructured
        sparsity and k-means bits (docs/targets.md), not channels."""
        return self.bytes is not None and self.bytes.format == ModelFormat.COMPRESSED.value

    @property
    def constraint(self) -> tuple[str, Constraint]:
        """(its name, the constraint): the one given."""
        for name in TARGET_CONSTRAINTS:
            value = getattr(self, name)
            if value is not None:
                return name, value
        raise AssertionError("validated: exactly one constraint")
class QuantizeSpec(SpecModel):
    """Trained quantisation after pruning and fine-tuning, the masks held (docs/engine.md,
    "Quantisation"). ``kmeans``: Deep Compression's weight sharing (a codebook of ``2 ** bits``
    centroids per tensor, linearly initialised, centroids fine-tuned with the gradients of the
    weights sharing each one summed). ``linear``: per-output-channel symmetric integers
    (``bits`` 8 or 4) times a float32 scale, fine-tuned with the straight-through estimator."""

    method: Literal["kmeans", "linear"] = "kmeans"
    bits: int = Field(default=8, ge=1, le=8, description="Bits per weight code, unless "
                      "layer_bits or overrides say otherwise.")
    layer_bits: dict[str, int] = Field(
        default_factory=dict, description='Bits per layer kind, e.g. {"Conv2d": 8, '
        '"Linear": 5} (the paper\'s LeNet-5 setting).')
    overrides: dict[str, int] = Field(
        default_factory=dict, description="Bits per tensor, keyed by an fnmatch pattern of "
        "the parameter name; the first matching pattern wins.")
    epochs: int = Field(default=1, ge=0, le=100, description="Fine-tune epochs after "
                        "quantising (centroids, or STE latent weights); 0: none.")
    lr: float = Field(default=1e-4, gt=0, le=10, description="Learning rate of that "
                      "fine-tune (finetune's optimizer, batch size and distillation).")
    kmeans_iterations: int = Field(default=50, ge=1, le=1000,
                                   description="Lloyd's iterations at most (kmeans).")

    @model_validator(mode="after")
    def _bits(self) -> QuantizeSpec:
        low = 2 if self.method == "linear" else 1
        for where, bits in [("bits", self.bits), *self.layer_bits.items(),
                            *self.overrides.items()]:
            if not low <= bits <= 8:
                raise ValueError(f"{self.method} takes bits {low}..8, got {bits} ({where})")
        return self


class DeploySpec(SpecModel):
    """Models a runtime loads, made from the job's final model and measured in the job
    (``report.cost.runtimes``): each is scored on the MNIST test split and timed on the CPU
    in alternation with the PyTorch model it came from."""

    onnx: bool = Field(default=True, description="Export to ONNX (downloaded with "
                       "?format=onnx) and run it in ONNX Runtime; where export fails, the "
                       "report says why (onnx_unavailable) and no file is written.")
    onnx_int8: bool = Field(default=True, description="An int8 ONNX file "
                            "(onnxruntime.quantization.quantize_dynamic: int8 weights, "
                            "activations quantised at run time) made from the ONNX file and "
                            "kept (?format=onnx_int8) only when ONNX Runtime runs it faster "
                            "than the fp32 file at the largest batch timed; otherwise the "
                            "report says onnx_int8_slower with both latencies.")
    int8: bool = Field(default=True, description="int8 weights through torchao "
                       "(Int8WeightOnlyConfig on Linear layers), saved as a state_dict that "
                       "torch.load(..., weights_only=True) restores (?format=torchao_int8).")
class DataSpec(SpecModel):
    """Which dataset the job fine-tunes and evaluates on (docs/datasets.md)."""

    dataset: str = Field(
        default=DEFAULT_DATASET, max_length=64,
        description="mnist (the default), fashion_mnist or kmnist (IDX files under the "
        "worker's data root), or the id of one of your datasets (POST /v1/datasets).")

    @field_validator("dataset")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in BUILTIN_DATASETS and not is_dataset_id(value):
            raise ValueError(f"{value!r} is neither {', '.join(BUILTIN_DATASETS)} nor a "
                             "dataset id (ds- and 32 hex digits, from POST /v1/datasets)")
        return value

    @property
    def uploaded(self) -> bool:
        return is_dataset_id(self.dataset)
