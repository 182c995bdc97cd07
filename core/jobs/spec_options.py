"""The parts of a job spec beside pruning and fine-tuning's own fields: how MNIST is fed, the
job's own limits, distillation, the sensitivity scan and the accuracy-budget search.
``core/jobs/spec.py`` assembles them into ``JobSpec`` (and re-exports them, so
``from core.jobs.spec import InputSpec`` works)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.datasets.record import BUILTIN_DATASETS, DEFAULT_DATASET, is_dataset_id


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


class InputSpec(SpecModel):
    """How MNIST images are fed to the model: (N, 1, 28, 28) floats, normalised."""

    mean: float = Field(default=0.1307, ge=-10, le=10)
    std: float = Field(default=0.3081, gt=0, le=10)
    flatten: bool = Field(default=False, description="Feed (N, 784) instead of (N, 1, 28, 28).")


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
