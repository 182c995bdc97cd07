"""The .pt2 operator allow-list is tied to what our own models export to: every registry
architecture and a BatchNorm + residual CNN, exported (eval and train, training IR and core
ATen) and saved with the real torch.export.save, pass the door; and the ops they use are
exactly the list's "seen in our exports" part, so neither side can drift silently."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from api_tests.models import ResidualBN
from core.jobs.formats import ModelFormat
from core.settings import Settings
from core.uploads import check_upload
from core.uploads.pt2_ops import ALLOWED_ATEN_OPS, SEEN_IN_OUR_EXPORTS
from worker.engine import registry


def _small(name: str) -> nn.Module:
    widths = {"lenet5": {"conv1": 2, "conv2": 4, "fc1": 8, "fc2": 8},
              "small_cnn_bn": {"conv1": 2, "conv2": 4}}.get(name, {"fc1": 8, "fc2": 8})
    return registry.build(name, widths)


# (model, train mode, core ATen decomposition)
EXPORTS = [(name, False, False) for name in registry.BUILDERS] + [
    ("residual_bn", False, False), ("residual_bn", True, False),
    ("residual_bn", False, True), ("residual_bn", True, True), ("lenet5", False, True),
]


def _export(name: str, train: bool, core: bool) -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    module = ResidualBN() if name == "residual_bn" else _small(name)
    module.train(train)
    program = torch.export.export(module, (torch.zeros(2, 1, 28, 28),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.run_decompositions() if core else program


def _aten_ops(program: torch.export.ExportedProgram) -> set[str]:
    return {n.target.__name__.split(".")[0] for n in program.graph.nodes
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)}


@pytest.fixture(scope="module")
def ops_seen() -> set[str]:
    seen: set[str] = set()
    for export in EXPORTS:
        seen |= _aten_ops(_export(*export))
    return seen


@pytest.mark.parametrize("export", EXPORTS, ids=[f"{n}-{'train' if t else 'eval'}"
                                                 f"{'-core' if c else ''}" for n, t, c in EXPORTS])
def test_our_own_exports_pass_the_door(
    export: tuple[str, bool, bool], tmp_path: Path, settings: Settings
) -> None:
    path = tmp_path / "model.pt2"
    torch.export.save(_export(*export), str(path))
    assert check_upload(path, settings) is ModelFormat.PT2


def test_the_seen_ops_are_exactly_those_our_models_use(ops_seen: set[str]) -> None:
    assert ops_seen == set(SEEN_IN_OUR_EXPORTS)
    assert ops_seen <= ALLOWED_ATEN_OPS
