"""Shrink: shape bookkeeping for each pattern, exact removal (shrunk == masked model on MNIST
batches), residual coupling, registry widths, and refusals naming the op and the line."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from torch import nn

from api_tests.worker.engine.shrink import models
from core.jobs.architectures import state_dict_table
from core.jobs.error_codes import JobErrorCode
from core.jobs.spec import PruningSpec
from worker.engine import registry, scripting
from worker.engine.errors import EngineError
from worker.engine.shrink import prepare
from worker.engine.shrink.rewrite import zero_removed

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HALF = PruningSpec(method="ln_structured", scope="layerwise", amount=0.5, dim=0, shrink=True)


@pytest.fixture(scope="module")
def batch(mnist_test: tuple[Any, Any]) -> torch.Tensor:  # only in tests marked slow
    images, _ = mnist_test
    return images[:256]  # (256, 1, 28, 28), real MNIST digits


def _copy(model: nn.Module) -> nn.Module:
    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer)
    return copy.deepcopy(model)


def _shrink_and_mask(model: nn.Module, architecture: str | None, spec: PruningSpec = HALF,
                     ) -> tuple[Any, nn.Module]:
    masked = _copy(model)
    prepared = prepare(model, spec, architecture, seed=0)
    zero_removed(masked, prepared.plans)
    return prepared.apply(), masked


def _residual(kind: str) -> torch.jit.ScriptModule:
    net = models.randomize_batchnorm(models.ResidualNet())
    if kind == "scripted":
        return scripting.script(net)
    return torch.jit.trace(net, torch.zeros(2, 1, 28, 28))


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_residual_shape_bookkeeping(kind: str) -> None:
    """The fast-loop twin of the MNIST test below: random inputs, same bookkeeping."""
    shrunk, masked = _shrink_and_mask(_residual(kind), None)
    [pruned] = [g for g in shrunk.report.groups if "stem" in g.producers]
    assert pruned.producers == ["stem", "block1.conv2", "block2.conv2"]
    assert sorted(pruned.tensors) == sorted(
        ["stem.weight", "stem.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
         "block1.conv1.weight", "block2.conv1.weight", "fc.weight"]
        + [f"{b}.{t}" for b in ("block1", "block2") for t in (
            "conv2.weight", "conv2.bias", "bn2.weight", "bn2.bias", "bn2.running_mean",
            "bn2.running_var")])
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(shrunk.model(x), masked(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["scripted", "traced"])
@pytest.mark.slow  # MNIST batches: the test split is read
def test_residual_groups_are_coupled_and_removal_is_exact(kind: str, batch: torch.Tensor) -> None:
    model = _residual(kind)
    shrunk, masked = _shrink_and_mask(model, None)
    report = shrunk.report
    residual = next(g for g in report.groups if "stem" in g.producers)
    # the stem and both blocks' last convs meet in the adds: one group, pruned together
    assert residual.producers == ["stem", "block1.conv2", "block2.conv2"]
    assert (residual.channels_before, residual.channels_after, residual.pruned) == (8, 4, True)
    assert report.widths == {"stem": 4, "block1.conv1": 4, "block1.conv2": 4,
                             "block2.conv1": 4, "block2.conv2": 4, "fc": 10}
    shapes = {c.name: (c.shape_before, c.shape_after) for c in report.tensors}
    assert shapes["stem.weight"] == ([8, 1, 3, 3], [4, 1, 3, 3])
    assert shapes["bn.running_var"] == ([8], [4])
    assert shapes["block1.conv1.weight"] == ([8, 8, 3, 3], [4, 4, 3, 3])  # in and out
    assert shapes["block2.bn2.bias"] == ([8], [4])
    assert shapes["fc.weight"] == ([10, 392], [10, 196])  # C*H*W: 8*7*7 -> 4*7*7
    assert "fc.bias" not in shapes  # the logits keep their 10 outputs
    head = next(g for g in report.groups if g.producers == ["fc"])
    assert (head.pruned, head.reason) == (False, "feeds the model's output")
    with torch.no_grad():
        expected = masked(batch)
        got = shrunk.model(batch)
    assert got.shape == (256, 10)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert dict(shrunk.model.named_parameters())["fc.weight"].shape == (10, 196)


@pytest.mark.slow  # MNIST batches: the test split is read
def test_flatten_linear_maps_channel_major_features(batch: torch.Tensor) -> None:
    """lenet5: conv2's kept channels select fc1's inputs in blocks of 5*5 = 25."""
    model = registry.build("lenet5").eval()
    weight = model.state_dict()["fc1.weight"].clone()
    shrunk, masked = _shrink_and_mask(model, "lenet5", HALF.model_copy(
        update={"include": ["conv1.weight", "conv2.weight"]}))
    conv2 = next(g for g in shrunk.report.groups if g.producers == ["conv2"])
    assert conv2.channels_after == 8
    kept = masked.state_dict()["conv2.weight"].flatten(1).abs().sum(1).nonzero().flatten()
    columns = torch.cat([torch.arange(c * 25, c * 25 + 25) for c in kept.tolist()])
    torch.testing.assert_close(shrunk.model.state_dict()["fc1.weight"], weight[:, columns])
    assert shrunk.report.widths == {"conv1": 3, "conv2": 8, "fc1": 120, "fc2": 84}
    with torch.no_grad():
        torch.testing.assert_close(shrunk.model(batch), masked(batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["mnist_mlp", "lenet5", "small_cnn_bn"])
@pytest.mark.slow  # MNIST batches: the test split is read
def test_registry_widths_rebuild_the_shrunk_model(name: str, batch: torch.Tensor) -> None:
    model = models.randomize_batchnorm(registry.build(name))
    shrunk, masked = _shrink_and_mask(model, name)
    assert shrunk.report.architecture == name
    state = shrunk.model.state_dict()
    # the torch-free table with these widths describes exactly the shrunk tensors
    table = state_dict_table(name, shrunk.report.widths)
    assert [(t.name, t.shape) for t in table] == [(k, list(v.shape)) for k, v in state.items()]
    rebuilt = registry.build(name, shrunk.report.widths).eval()
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch), masked(batch), atol=1e-5, rtol=0)
    for row in shrunk.rows:  # targeted rows: masked zeros, old and new shapes
        assert row.shape_before == row.shape
        assert row.shape_after == list(state[row.name].shape)


def test_mlp_neurons_linear_to_linear() -> None:
    shrunk, _ = _shrink_and_mask(registry.build("mnist_mlp").eval(), "mnist_mlp")
    shapes = {c.name: c.shape_after for c in shrunk.report.tensors}
    assert shapes == {"fc1.weight": [128, 784], "fc1.bias": [128], "fc2.weight": [64, 128],
                      "fc2.bias": [64], "fc3.weight": [10, 64]}
    assert shrunk.report.parameters_after == 128 * 785 + 64 * 129 + 10 * 65


def test_group_score_is_the_sum_of_the_producers_norms() -> None:
    model = _residual("scripted")
    state = model.state_dict()
    score = sum(state[f"{p}.weight"].flatten(1).norm(dim=1)
                for p in ["stem", "block1.conv2", "block2.conv2"])
    prepared = prepare(model, HALF, None, seed=0)
    plan = next(p for p in prepared.plans if "stem" in p.group.producers)
    assert plan.keep.tolist() == sorted(score.argsort(descending=True)[:4].tolist())


def _refusal(model: nn.Module) -> EngineError:
    with pytest.raises(EngineError) as caught:
        prepare(model, HALF, None, seed=0)
    return caught.value


def test_refuses_a_fixed_size_reshape_naming_the_op_and_line() -> None:
    error = _refusal(scripting.script(models.FixedView()))
    assert error.code is JobErrorCode.UNSUPPORTED_MODEL
    assert "cannot remove channels of conv" in error.message
    assert "aten::view (a reshape to fixed sizes" in error.message
    assert "models.py:" in error.message and "x.view(-1, 400)" in error.message


def test_refuses_non_zero_preserving_activations_and_plain_batchnorm() -> None:
    sigmoid = _refusal(torch.jit.trace(models.Sigmoid(), torch.zeros(2, 1, 28, 28)))
    assert sigmoid.code is JobErrorCode.UNSUPPORTED_MODEL
    assert "fc2.weight reads channels that aten::sigmoid at " in sigmoid.message
    assert "models.py:" in sigmoid.message
    no_affine = _refusal(scripting.script(models.NoAffine()))
    assert "aten::batch_norm (BatchNorm without affine weight and bias)" in no_affine.message


@pytest.mark.parametrize(("compile_", "says"), [
    ("script", "aten::conv_transpose2d transposed: its output channels are weight dim 1 "
               "(layer up)"),
    ("trace", "aten::_convolution transposed: its output channels are weight dim 1 (layer up)"),
])
def test_refuses_transposed_convolutions(compile_: str, says: str) -> None:
    module = models.Transposed()
    model = (scripting.script(module) if compile_ == "script"
             else torch.jit.trace(module, torch.zeros(2, 1, 28, 28)))
    error = _refusal(model)
    assert error.code is JobErrorCode.UNSUPPORTED_MODEL
    assert error.message.startswith("cannot remove channels of conv1 (asked for by conv1.weight)")
    assert says in error.message
    if compile_ == "trace":  # the stack's first frame in the model's own code, not torch's
        assert "shrink/models.py:" in error.message and "conv.py" not in error.message


def test_refusal_leaves_the_model_untouched() -> None:
    model = scripting.script(models.FixedView())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _refusal(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_only_output_groups_targeted_is_refused() -> None:
    spec = HALF.model_copy(update={"include": ["fc3.weight"]})
    with pytest.raises(EngineError) as caught:
        prepare(registry.build("mnist_mlp"), spec, "mnist_mlp", seed=0)
    assert caught.value.code is JobErrorCode.NO_PRUNABLE_TENSORS
    assert "fc3: feeds the model's output" in caught.value.message


def test_spec_refuses_shrink_without_output_channel_pruning() -> None:
    with pytest.raises(ValueError, match="use method ln_structured or random_structured"):
        PruningSpec(method="l1_unstructured", shrink=True)
    with pytest.raises(ValueError, match="dim 1"):
        PruningSpec(method="ln_structured", dim=1, shrink=True)


@pytest.mark.slow  # MNIST batches: the test split is read
def test_a_layer_used_twice_couples_its_input_and_output(batch: torch.Tensor) -> None:
    model = scripting.script(models.SharedLayer().eval())
    shrunk, masked = _shrink_and_mask(model, None)
    [group] = [g for g in shrunk.report.groups if g.pruned]
    assert group.producers == ["stem", "shared"] and group.channels_after == 3
    shapes = {c.name: c.shape_after for c in shrunk.report.tensors}
    assert shapes["shared.weight"] == [3, 3, 3, 3]
    assert shapes["head.1.weight"] == [10, 3 * 28 * 28]
    with torch.no_grad():
        torch.testing.assert_close(shrunk.model(batch), masked(batch), atol=1e-5, rtol=0)


@pytest.mark.slow  # MNIST batches: the test split is read
def test_random_structured_and_overrides(batch: torch.Tensor) -> None:
    spec = PruningSpec.model_validate({**HALF.model_dump(), "method": "random_structured",
                                       "overrides": {"conv2.weight": 4}})
    torch.manual_seed(0)
    first, masked = _shrink_and_mask(registry.build("lenet5").eval(), "lenet5", spec)
    torch.manual_seed(0)
    again, _ = _shrink_and_mask(registry.build("lenet5").eval(), "lenet5", spec)
    assert first.report.widths == {"conv1": 3, "conv2": 12, "fc1": 60, "fc2": 42}
    assert first.report.scoring == "one uniform random score per channel of the group"
    torch.testing.assert_close(first.model.state_dict(), again.model.state_dict())  # seeded
    with torch.no_grad():
        torch.testing.assert_close(first.model(batch), masked(batch), atol=1e-5, rtol=0)
