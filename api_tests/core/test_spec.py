"""The spec's defaults are the reference recipe: ``{"architecture": "mnist_mlp"}`` alone means
30% global L1 unstructured and 2 epochs of Adam, as the README promises; a named ``recipe``
fills in only what the spec leaves out."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.jobs.spec import REFERENCE_RECIPE, AugmentSpec, JobSpec


def test_defaults_are_the_reference_recipe() -> None:
    assert JobSpec(architecture="mnist_mlp") == REFERENCE_RECIPE
    assert JobSpec().pruning == REFERENCE_RECIPE.pruning
    assert JobSpec().finetune == REFERENCE_RECIPE.finetune


def test_a_named_recipe_fills_in_what_the_spec_leaves_out() -> None:
    spec = JobSpec.model_validate({"recipe": "high_sparsity", "pruning": {"amount": 0.95}})
    assert spec.pruning.amount == 0.95
    assert (spec.pruning.schedule.kind, spec.pruning.schedule.end,
            spec.pruning.schedule.every_steps) == ("agp", 0.5, 100)
    ft = spec.finetune
    assert (ft.epochs, ft.lr, ft.lr_schedule, ft.batch_size) == (20, 1e-3, "cosine", 128)
    assert ft.augment == AugmentSpec(shift=2) and ft.distill is None
    assert spec.search is None and spec.quantize is None  # other blocks untouched
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec  # stored and re-read
    as_submitted = '{"recipe": "high_sparsity", "pruning": {"amount": 0.95}}'
    assert JobSpec.model_validate_json(as_submitted) == spec  # the service parses JSON
    assert JobSpec(architecture="mnist_mlp").recipe is None  # no recipe: the reference one


def test_the_specs_own_fields_win_a_whole_field_at_a_time() -> None:
    spec = JobSpec.model_validate({
        "recipe": "high_sparsity",
        "pruning": {"amount": 0.9, "schedule": {"kind": "one_shot"}},
        "finetune": {"epochs": 5, "augment": None, "distill": {"weight": 0.9}}})
    assert spec.pruning.schedule.kind == "one_shot"  # replaced whole, not merged
    assert spec.finetune.epochs == 5 and spec.finetune.augment is None
    assert spec.finetune.distill is not None and spec.finetune.distill.weight == 0.9
    assert spec.finetune.batch_size == 128  # not given: the recipe's


def test_an_unknown_recipe_and_a_bad_combination_are_refused_at_their_fields() -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"recipe": "fast"})
    assert info.value.errors()[0]["loc"] == ("recipe",)
    with pytest.raises(ValidationError) as info:  # the recipe's agp needs a fine-tune
        JobSpec.model_validate({"recipe": "high_sparsity", "finetune": {"epochs": 0}})
    assert info.value.errors()[0]["loc"] == ("finetune", "epochs")


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
