"""The spec's defaults are the reference recipe: ``{"architecture": "mnist_mlp"}`` alone means
30% global L1 unstructured and 2 epochs of Adam, as the README promises."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.jobs.spec import REFERENCE_RECIPE, JobSpec


def test_defaults_are_the_reference_recipe() -> None:
    assert JobSpec(architecture="mnist_mlp") == REFERENCE_RECIPE
    assert JobSpec().pruning == REFERENCE_RECIPE.pruning
    assert JobSpec().finetune == REFERENCE_RECIPE.finetune


@pytest.mark.parametrize("spec", [
    {"target": {"flops": {"max_ratio": 0.5}, "max_trials": 2}},
    {"target": {"bytes": {"max": 30000, "format": "compressed"}, "quantize_bits": [6, 4]},
     "search": {"max_trials": 8}, "quantize": {"epochs": 2},
     "pruning": {"schedule": {"kind": "agp"}}, "finetune": {"epochs": 2}},
], ids=["channels", "compressed"])
def test_a_stored_target_spec_validates_again(spec: dict[str, Any]) -> None:
    """The store and the report keep the spec with every default written out: the target's
    rules judge values, not which fields were given, so it reads back."""
    parsed = JobSpec.model_validate(spec)
    assert JobSpec.model_validate(parsed.model_dump(mode="json")) == parsed


@pytest.mark.parametrize(("spec", "where"), [
    ({"target": {"flops": {"max_ratio": 0.5}, "quantize_bits": [4]}}, ("target",)),
    ({"target": {"bytes": {"max": 30000, "format": "compressed"}}, "quantize": {"bits": 6}},
     ("quantize", "bits")),
    ({"target": {"flops": {"max_ratio": 0.5}}, "search": {"max_accuracy_drop": 0.01}},
     ("search", "max_accuracy_drop")),
])
def test_target_rules_refuse_values_that_differ_from_the_defaults(
    spec: dict[str, Any], where: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(spec)
    assert caught.value.errors()[0]["loc"][:len(where)] == where
