"""torchvision's CNN families (width-reduced, same classes), scripted and traced: every Conv
and Linear ends up in a channel group or in a refusal naming the op and the source line;
each family shrinks, exactly (shrunk == masked to 1e-4), or is refused saying where. As
``.pt2`` (torch.export), each family shrinks exactly to the same shapes as scripted, or is
refused naming the same op."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from api_tests.worker.engine.shrink.models import randomize_batchnorm
from core.jobs.error_codes import JobErrorCode
from core.jobs.spec import PruningSpec
from core.settings import Settings
from testkit import zoo
from worker.engine import exported
from worker.engine.errors import EngineError
from worker.engine.shrink import prepare
from worker.engine.shrink.graph import analyse
from worker.engine.shrink.rewrite import zero_removed

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

HALF = PruningSpec(method="ln_structured", scope="layerwise", amount=0.5, dim=0, shrink=True)
SHRINKS = ["alexnet", "vgg", "resnet", "resnext", "densenet", "googlenet", "inception",
           "mnasnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "regnet_x", "regnet_y",
           "shufflenet", "squeezenet1_1"]
# chunk and channel shuffle are followed in TorchScript graphs only (shrink/shuffle.py)
PT2_SHRINKS = [f for f in SHRINKS if f != "shufflenet"]
# family -> {how (export: as .pt2): what the refusal names}
REFUSED = {
    "convnext": {"script": "aten::permute", "trace": "aten::permute", "export": "aten::permute"},
    "shufflenet": {"export": "aten::view (a reshape to fixed sizes"},
}
KINDS = ["script", "trace"]


def _model(family: str, how: str) -> torch.jit.ScriptModule:
    return zoo.compile_(randomize_batchnorm(zoo.build(family)), how, family)


def _layers(model: nn.Module) -> set[str]:
    kinds = {"Conv1d", "Conv2d", "Conv3d", "Linear"}
    return {name for name, sub in model.named_modules()
            if getattr(sub, "original_name", "") in kinds}


def _logits(out: object) -> torch.Tensor:
    """GoogLeNet and Inception scripted return a named tuple; the logits come first."""
    return out if isinstance(out, torch.Tensor) else out[0]  # type: ignore[index]


@pytest.mark.parametrize("how", KINDS)
@pytest.mark.parametrize("family", sorted(set(SHRINKS) | set(REFUSED)))
def test_every_layer_is_in_a_group_or_a_refusal(family: str, how: str) -> None:
    model = _model(family, how)
    graph = analyse(model)
    grouped = {p for g in graph.groups for p in g.producers}
    refused = {r.split(":")[0].removeprefix("layer ") for r in graph.refusals}
    assert _layers(model) - grouped - refused == set()
    assert [r for r in graph.refusals if ".py:" not in r] == []  # each names its line


@pytest.mark.parametrize("how", KINDS)
@pytest.mark.parametrize("family", SHRINKS)
def test_family_shrinks_exactly(family: str, how: str) -> None:
    model = _model(family, how)
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    masked = torch.jit.load(buffer)
    prepared = prepare(model, HALF, None, seed=0)
    zero_removed(masked, prepared.plans)
    shrunk = prepared.apply()
    x = zoo.example(family)
    with torch.no_grad():
        gap = (_logits(shrunk.model(x)) - _logits(masked(x))).abs().max().item()
    assert gap < 1e-4
    assert shrunk.report.parameters_after < 0.6 * shrunk.report.parameters_before


@pytest.mark.parametrize(("family", "how"), [(family, how) for family in sorted(REFUSED)
                                             for how in KINDS if how in REFUSED[family]])
def test_family_is_refused_naming_op_and_line(family: str, how: str) -> None:
    with pytest.raises(EngineError) as caught:
        prepare(_model(family, how), HALF, None, seed=0)
    assert caught.value.code is JobErrorCode.UNSUPPORTED_MODEL
    message = caught.value.message
    assert REFUSED[family][how] in message
    assert f"torchvision/models/{family}" in message  # the line in the model's own code


def _program(family: str, folder: Path, settings: Settings) -> torch.fx.GraphModule:
    """The family as a job holds its .pt2: exported with a dynamic batch, saved, loaded."""
    model = randomize_batchnorm(zoo.build(family))
    program = torch.export.export(model, (zoo.example(family),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(folder / "model.pt2"))
    return exported.load_exported(folder / "model.pt2", settings)


@pytest.mark.parametrize("family", PT2_SHRINKS)
def test_family_as_pt2_shrinks_exactly_like_torchscript(
    family: str, tmp_path: Path, engine_settings: Settings
) -> None:
    program = _program(family, tmp_path, engine_settings)
    masked = copy.deepcopy(program)
    prepared = prepare(program, HALF, None, seed=0)
    zero_removed(masked, prepared.plans)
    shrunk = prepared.apply()
    x = zoo.example(family)
    with torch.no_grad():
        assert (shrunk.model(x) - masked(x)).abs().max().item() < 1e-4
    script = prepare(_model(family, "script"), HALF, None, seed=0).apply().report
    assert shrunk.report.tensors == script.tensors  # one set of rules, two front ends
    assert prepared.graph.refusals == []


@pytest.mark.parametrize("family", sorted(f for f in REFUSED if "export" in REFUSED[f]))
def test_family_as_pt2_is_refused_naming_op_and_line(
    family: str, tmp_path: Path, engine_settings: Settings
) -> None:
    with pytest.raises(EngineError) as caught:
        prepare(_program(family, tmp_path, engine_settings), HALF, None, seed=0)
    assert caught.value.code is JobErrorCode.UNSUPPORTED_MODEL
    assert REFUSED[family]["export"] in caught.value.message
    assert f"torchvision/models/{family}" in caught.value.message
