"""Passes that edit TorchScript graphs work on a copy: the module a job holds, and every
module of the same type scripted in the process, keep their code."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from worker.engine import saving, scripting
from worker.engine.shrink.rewrite import generic_groups


def _depthwise() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return scripting.script(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=4)))


def _conv_graph(module: torch.jit.ScriptModule) -> str:
    """The depthwise conv's code: every method's graph, as printed."""
    conv = dict(module.named_children())["1"]._c
    return "".join(str(conv._get_method(name).graph) for name in conv._method_names())


def test_saving_as_pt2_leaves_the_scripted_graph_as_it_was(tmp_path: Path) -> None:
    module = _depthwise()
    before = str(module.graph)
    outputs = saving.save_all(module, saving.ModelFormat.TORCHSCRIPT, tmp_path)
    assert saving.ModelFormat.PT2 in outputs  # the converter did run
    assert str(module.graph) == before


def test_the_grouped_conv_rewrite_leaves_other_modules_of_the_type_alone() -> None:
    module, other = _depthwise(), _depthwise()
    before = _conv_graph(other)
    rewritten = generic_groups(module)
    assert "aten::floordiv" in _conv_graph(rewritten)  # groups computed from the tensors
    assert (_conv_graph(other), _conv_graph(module)) == (before, before)
