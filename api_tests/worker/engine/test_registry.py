"""The torch-free architecture table (served by the API) equals the engine's modules."""

from __future__ import annotations

import pytest
import torch

from core.jobs.architectures import ARCHITECTURES
from core.jobs.spec import PruningSpec
from worker.engine import registry, scripting
from worker.engine.pruning import find_targets


def test_same_names() -> None:
    assert sorted(ARCHITECTURES) == sorted(registry.BUILDERS)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_keys_shapes_and_default_targets_agree(name: str) -> None:
    info = ARCHITECTURES[name]
    module = registry.build(name)
    assert [(t.name, t.shape) for t in info.tensors] == [
        (k, list(v.shape)) for k, v in module.state_dict().items()
    ]
    assert [t.name for t in info.tensors if t.prunable] == [
        t.name for t in find_targets(module, PruningSpec())
    ]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_scriptable_and_fits_mnist_io(name: str) -> None:
    module = registry.build(name).eval()
    scripted = scripting.script(module)
    x = torch.randn(3, *ARCHITECTURES[name].input_shape)
    with torch.no_grad():
        assert scripted(x).shape == (3, 10)
        assert module(x.reshape(3, -1)).shape == (3, 10)  # flattened input works too
