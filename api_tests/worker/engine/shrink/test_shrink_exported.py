"""Shrink on an exported program (``.pt2``): the FX front end of the same channel rules.

Each model is exported, saved and loaded as a job loads an upload; the shrunk program equals
the masked one (exactness, to 1e-4), its groups and new shapes are the ones the same model
gets as TorchScript, and it re-exports to a ``.pt2`` that plain ``torch.export.load`` reads
and our own door accepts. Refusals name the op and the model's source line, as for
TorchScript."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from api_tests.models import ResidualBN
from api_tests.security.hostile_pt2 import export_file
from api_tests.worker.engine.shrink import models
from core.jobs.error_codes import JobErrorCode
from core.jobs.formats import ModelFormat
from core.jobs.spec import JobSpec, PruningSpec
from core.settings import Settings
from core.uploads import check_upload
from worker.engine import exported, registry, scripting, targets
from worker.engine.errors import EngineError
from worker.engine.shrink import Shrunk, prepare
from worker.engine.shrink.rewrite import zero_removed

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

HALF = PruningSpec(method="ln_structured", scope="layerwise", amount=0.5, dim=0, shrink=True)

MODELS = {
    "mnist_mlp": lambda: registry.build("mnist_mlp"),
    "lenet_300_100": lambda: registry.build("lenet_300_100"),
    "lenet5": lambda: registry.build("lenet5"),
    "small_cnn_bn": lambda: registry.build("small_cnn_bn", {"conv1": 8, "conv2": 16}),
    "residual": lambda: models.ResidualNet(),
    "residual_no_bias": lambda: models.ResidualNet(bias=False),
    "residual_bn": ResidualBN,
    "depthwise": models.Depthwise,
    "grouped": models.Grouped,
    "excite": models.Excite,
    "concat": models.Concat,
    "dense_concat": models.DenseConcat,
    "shared_layer": models.SharedLayer,
    "branchy_depthwise": models.BranchyDepthwise,
}


def _program(module: nn.Module, tmp_path: Path, settings: Settings, core: bool = False
             ) -> torch.fx.GraphModule:
    """The module as a job holds a .pt2 upload: exported (``core``: decomposed to core
    ATen), saved, checked and loaded."""
    if core:
        program = torch.export.export(module.eval(), (torch.zeros(2, 1, 28, 28),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program.run_decompositions(), str(tmp_path / "in.pt2"))
        path = tmp_path / "in.pt2"
    else:
        path = export_file(module.eval(), tmp_path / "in.pt2")
    assert check_upload(path, settings) is ModelFormat.PT2
    return exported.load_exported(path, settings).eval()


def _shrink(program: torch.fx.GraphModule) -> tuple[Shrunk, nn.Module]:
    masked = copy.deepcopy(program)
    prepared = prepare(program, HALF, None, seed=0)
    zero_removed(masked, prepared.plans)
    return prepared.apply(), masked


@pytest.mark.parametrize("core", [False, True], ids=["aten", "core_aten"])
@pytest.mark.parametrize("name", list(MODELS))
def test_an_exported_program_shrinks_exactly_like_torchscript(
    name: str, core: bool, tmp_path: Path, engine_settings: Settings
) -> None:
    """As exported, and decomposed to core ATen (``run_decompositions``: convolution,
    _native_batch_norm_legit_no_training, addmm, flatten as a fixed-size view)."""
    torch.manual_seed(0)
    module = models.randomize_batchnorm(MODELS[name]())
    program = _program(copy.deepcopy(module), tmp_path, engine_settings, core)
    shrunk, masked = _shrink(program)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = masked(x)
        assert (shrunk.model(x) - expected).abs().max().item() < 1e-4
    # one set of rules: the same groups, kept channels and new shapes as via TorchScript
    script = prepare(scripting.script(module), HALF, None, seed=0).apply().report
    assert [(g.producers, g.channels_after, g.pruned) for g in shrunk.report.groups] == [
        (g.producers, g.channels_after, g.pruned) for g in script.groups]
    assert shrunk.report.tensors == script.tensors
    assert shrunk.report.widths == script.widths
    assert shrunk.report.parameters_after == script.parameters_after
    # the returned file: re-exported, plain torch.export.load, our own door, same outputs
    out = tmp_path / "out.pt2"
    exported.save_exported(shrunk.model, out)
    assert check_upload(out, engine_settings) is ModelFormat.PT2
    reloaded = torch.export.load(str(out)).module()
    with torch.no_grad():
        assert (reloaded(x) - expected).abs().max().item() < 1e-4
    state = reloaded.state_dict()
    assert {c.name: list(state[c.name].shape) for c in shrunk.report.tensors} == {
        c.name: c.shape_after for c in shrunk.report.tensors}


def test_grouped_conv_groups_follow_the_removed_blocks(
    tmp_path: Path, engine_settings: Settings
) -> None:
    shrunk, _ = _shrink(_program(models.Grouped(), tmp_path, engine_settings))
    [conv] = [n for n in shrunk.model.graph.nodes
              if n.target == torch.ops.aten.conv2d.default and n.args[1].target == "grouped.weight"]
    assert conv.args[6] == 2  # 4 groups of 2 channels, 2 removed
    assert list(shrunk.model.get_parameter("grouped.weight").shape) == [4, 2, 3, 3]


def _refusal(module: nn.Module, tmp_path: Path, settings: Settings) -> EngineError:
    program = _program(module, tmp_path, settings)
    before = {k: v.clone() for k, v in program.state_dict().items()}
    with pytest.raises(EngineError) as caught:
        prepare(program, HALF, None, seed=0)
    assert caught.value.code is JobErrorCode.UNSUPPORTED_MODEL
    assert all(torch.equal(before[k], v) for k, v in program.state_dict().items())
    return caught.value


def test_refuses_a_fixed_size_reshape_naming_the_op_and_line(
    tmp_path: Path, engine_settings: Settings
) -> None:
    error = _refusal(models.FixedView(), tmp_path, engine_settings)
    assert "cannot remove channels of conv" in error.message
    assert "aten::view (a reshape to fixed sizes" in error.message
    assert "shrink/models.py:" in error.message and "x.view(-1, 400)" in error.message


@pytest.mark.parametrize(("module", "says"), [
    (models.Sigmoid, "fc2.weight reads channels that aten::sigmoid at "),
    (models.NoAffine, "aten::batch_norm (BatchNorm without affine weight and bias)"),
    (models.Transposed, "aten::conv_transpose2d transposed: its output channels are weight "
                        "dim 1 (layer up)"),
    (models.Multiplier, "8 output channels from 4 inputs (a channel multiplier) (layer dw)"),
])
def test_refuses_what_torchscript_refuses(
    module: type[nn.Module], says: str, tmp_path: Path, engine_settings: Settings
) -> None:
    error = _refusal(module(), tmp_path, engine_settings)
    assert says in error.message
    assert "shrink/models.py:" in error.message  # the model's line, not torch's
    assert "torch/nn/modules" not in error.message


def test_a_target_builds_its_candidates_from_an_exported_program(
    tmp_path: Path, engine_settings: Settings
) -> None:
    """``target`` narrows the groups of the same analysis: each candidate is a shrunk copy,
    the dense program untouched."""
    program = _program(models.randomize_batchnorm(models.ResidualNet()), tmp_path,
                       engine_settings)
    dense = {k: v.clone() for k, v in program.state_dict().items()}
    spec = JobSpec.model_validate({"target": {"parameters": {"max_ratio": 0.5}}})
    builder = targets.Builder(targets.prepare_groups(program, spec), seed=0)
    assert [p.name for p in builder.groups] == [
        "stem+block1.conv2+block2.conv2", "block1.conv1", "block2.conv1"]
    candidate = builder.build({p.name: 4 for p in builder.groups})
    assert candidate.report.widths["stem"] == 4 and candidate.report.parameters_after == 2642
    assert all(torch.equal(dense[k], v) for k, v in program.state_dict().items())
    with torch.no_grad():
        assert candidate.model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_only_refused_layers_targeted_names_their_ops(
    tmp_path: Path, engine_settings: Settings
) -> None:
    """A transposed conv opens no group: asking for it alone fails unsupported_model with
    its op and line, as for TorchScript, not 'nothing to prune'."""
    spec = HALF.model_copy(update={"include": ["up.weight"]})
    for model in (_program(models.Transposed(), tmp_path, engine_settings),
                  scripting.script(models.Transposed())):
        with pytest.raises(EngineError) as caught:
            prepare(model, spec, None, seed=0)
        assert caught.value.code is JobErrorCode.UNSUPPORTED_MODEL
        assert caught.value.message.startswith(
            "shrink cannot follow the channels of the targeted layers: layer up: "
            "aten::conv_transpose2d transposed: its output channels are weight dim 1 at ")
        if isinstance(model, torch.fx.GraphModule):  # scripted: the line in torch's conv.py
            assert "shrink/models.py:" in caught.value.message
