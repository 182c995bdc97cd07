"""The pruning block of the spec (``spec.pruning``): which weights are zeroed, how many and
how, on which schedule. Re-exported by ``core.jobs.spec``; ``field_error`` locates a refusal
at the field to change (shared with the rest of the spec)."""

from __future__ import annotations

import fnmatch
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.jobs.spec_options import SpecModel


class Method(StrEnum):
    L1_UNSTRUCTURED = "l1_unstructured"
    RANDOM_UNSTRUCTURED = "random_unstructured"
    LN_STRUCTURED = "ln_structured"
    RANDOM_STRUCTURED = "random_structured"
    SEMI_STRUCTURED = "semi_structured"  # N of every M consecutive weights along the input dim

    @property
    def structured(self) -> bool:
        return self in (Method.LN_STRUCTURED, Method.RANDOM_STRUCTURED)


class Scope(StrEnum):
    GLOBAL = "global"  # one threshold across all targeted tensors (prune.global_unstructured)
    LAYERWISE = "layerwise"  # each tensor pruned to the amount by its own threshold


# A fraction in [0, 1) (JSON number with a decimal point) or an absolute count (JSON integer),
# as torch.nn.utils.prune reads ``amount``.
Amount = StrictInt | StrictFloat


def check_amount(value: int | float, field: str = "amount") -> int | float:
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a number, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field} as a count must be >= 0, got {value}")
        return value
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"{field} as a fraction must be in [0, 1), got {value}; "
            "write a whole number (e.g. 300) for an absolute count"
        )
    return value


class OneShot(SpecModel):
    """Prune once to the target amount, then fine-tune."""

    kind: Literal["one_shot"] = "one_shot"


class Agp(SpecModel):
    """Zhu & Gupta's gradual schedule over the fine-tune's steps:
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3, s_f = ``pruning.amount``."""

    kind: Literal["agp"]
    initial_sparsity: float = Field(default=0.0, ge=0, lt=1, description="s_i at `start`.")
    start: float = Field(default=0.0, ge=0, lt=1, description="Fraction of the fine-tune's "
                         "steps at which pruning starts (t0).")
    end: float = Field(default=0.75, gt=0, le=1, description="Fraction of the fine-tune's "
                       "steps at which the final sparsity is reached and then held.")
    every_steps: int = Field(default=100, ge=1, le=1_000_000,
                             description="Steps between two mask updates (dt).")

    @model_validator(mode="after")
    def _window(self) -> Agp:
        if self.end <= self.start:
            raise field_error(("end",), f"end ({self.end}) must be after start ({self.start})")
        return self


class Iterative(SpecModel):
    """Han et al.: ``rounds`` prune-and-retrain rounds, each removing the same fraction of the
    remaining weights (sparsity after round k: 1 - (1 - amount) ** (k / rounds)), each followed
    by ``finetune.epochs`` epochs."""

    kind: Literal["iterative"]
    rounds: int = Field(default=5, ge=1, le=50)


Schedule = Annotated[OneShot | Agp | Iterative, Field(discriminator="kind")]


def field_error(loc: tuple[str | int, ...], message: str) -> ValidationError:
    """A validation error located at ``loc`` (so a 422 names the field, not the whole spec)."""
    return ValidationError.from_exception_data("JobSpec", [InitErrorDetails(
        type=PydanticCustomError("value_error", "{message}", {"message": message}),
        loc=loc, input=None,
    )])


class PruningSpec(SpecModel):
    """Which weights are zeroed, how many and how."""

    method: Method = Field(
        default=Method.L1_UNSTRUCTURED,
        description="l1_/random_unstructured: single weights, by magnitude or at random; "
        "ln_/random_structured: whole slices along `dim`; semi_structured: N of every M (`nm`), "
        "with scope layerwise, the one_shot schedule and no overrides.",
    )
    scope: Scope = Field(
        default=Scope.GLOBAL,
        description="global: one threshold across all targeted tensors; layerwise: per tensor. "
        "Structured methods are always layerwise.",
    )
    amount: Amount = Field(
        default=0.3,
        description="Fraction in [0, 1) of the targeted weights (or slices, for structured "
        "methods) to zero, or an absolute count when a whole number.",
    )
    n: Literal[1, 2, "inf", "fro"] = Field(
        default=2, description="Norm used by ln_structured to rank slices."
    )
    dim: int = Field(
        default=0,
        ge=-8,
        le=7,
        description="Dimension whose slices ln_structured/random_structured remove "
        "(0: output neurons/filters).",
    )
    include: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of parameter names to target (e.g. 'fc*.weight'). "
        "Empty: the weights of every Linear and Conv layer.",
    )
    exclude: list[str] = Field(
        default_factory=list, description="fnmatch patterns of parameter names never pruned."
    )
    overrides: dict[str, Amount] = Field(
        default_factory=dict,
        description="Per-tensor amounts, keyed by an fnmatch pattern of the parameter name. "
        "A tensor with an override is pruned on its own (layerwise) to that amount; the first "
        "matching pattern wins. With shrink, a pattern names a channel group: by its name, its "
        "producers joined by '+' as in the report's shrink groups (e.g. "
"'stem+layer1.conv2'), or by a targeted weight of one of its producers; a pattern "
        "that names no group fails the job (invalid_spec), saying which groups there are.",
    )
    schedule: Schedule = Field(default_factory=OneShot)
    shrink: bool = Field(
        default=False,
        description="Remove the pruned filters/neurons and everything that depends on them "
        "(BatchNorm, the next layer's inputs, residual partners) and return a smaller dense "
        "model. Needs ln_structured or random_structured with dim 0.",
    )
    round_to: int = Field(
        default=1, ge=1, le=1024,
        description="shrink: each channel group keeps a multiple of this many channels "
        "(e.g. 8, as GPU kernels like), rounding the count kept up.",
    )

    @model_validator(mode="after")
    def _shrink_needs_output_channels(self) -> PruningSpec:
        if self.shrink and not (self.method.structured and self.dim == 0):
            raise ValueError(
                "shrink removes whole output channels: use method ln_structured or "
                f"random_structured with dim 0 (got {self.method.value}, dim {self.dim})"
            )
        if self.round_to != 1 and not self.shrink:
            raise field_error(("round_to",), "round_to rounds the channels shrink keeps: "
                              "set shrink: true, or leave round_to at 1")
        return self

    nm: tuple[StrictInt, StrictInt] = Field(
        default=(2, 4),
        description="semi_structured: keep N of every M consecutive weights along the input "
        "dimension (2:4 is what GPU semi-structured kernels run).",
    )

    @field_validator("nm")
    @classmethod
    def _nm(cls, value: tuple[int, int]) -> tuple[int, int]:
        n, m = value
        if not 1 <= n < m <= 64:
            raise ValueError(f"nm must be [N, M] with 1 <= N < M <= 64, got [{n}, {m}]")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> PruningSpec:
        if self.shrink and self.schedule.kind != "one_shot":
            raise field_error(("shrink",), "shrink removes channels once: use the one_shot "
                              "schedule")
        if self.method is Method.SEMI_STRUCTURED:
            if self.scope is Scope.GLOBAL:
                raise field_error(("scope",), 'semi_structured is per tensor: set "scope": '
                                  '"layerwise"')
            if self.overrides:
                raise field_error(("overrides",), "semi_structured takes no per-tensor "
                                  "amounts: the N:M pattern fixes the sparsity")
            if self.schedule.kind != "one_shot":
                raise field_error(("schedule", "kind"), "semi_structured is applied one_shot")
        if self.schedule.kind != "one_shot":
            for loc, amount in [(("amount",), self.amount),
                                *((("overrides", k), v) for k, v in self.overrides.items())]:
                if not isinstance(amount, float):
                    raise field_error(loc, f"the {self.schedule.kind} schedule needs a fraction "
                                      f"in [0, 1), got the count {amount}")
        return self

    @field_validator("amount")
    @classmethod
    def _amount(cls, value: int | float) -> int | float:
        return check_amount(value)

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value: dict[str, int | float]) -> dict[str, int | float]:
        for pattern, amount in value.items():
            check_amount(amount, f"overrides[{pattern!r}]")
        return value

    def override_for(self, name: str) -> int | float | None:
        for pattern, amount in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return amount
        return None

    def selects(self, name: str, default_target: bool) -> bool:
        """Whether parameter ``name`` is targeted, given whether it is a default target."""
        if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        if self.include:
            return any(fnmatch.fnmatchcase(name, p) for p in self.include)
        return default_target
