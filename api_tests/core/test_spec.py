"""The spec's defaults are the reference recipe: ``{"architecture": "mnist_mlp"}`` alone means
30% global L1 unstructured and 2 epochs of Adam, as the README promises."""

from __future__ import annotations

from core.jobs.spec import REFERENCE_RECIPE, JobSpec


def test_defaults_are_the_reference_recipe() -> None:
    assert JobSpec(architecture="mnist_mlp") == REFERENCE_RECIPE
    assert JobSpec().pruning == REFERENCE_RECIPE.pruning
    assert JobSpec().finetune == REFERENCE_RECIPE.finetune
