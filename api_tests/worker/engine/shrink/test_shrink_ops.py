"""Shrink's op rules one by one, scripted and traced: the shapes each rule cuts, and the
shrunk model's outputs equal to the masked model's (exactness), on random inputs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from api_tests.worker.engine.shrink import models
from core.jobs.error_codes import JobErrorCode
from core.jobs.spec import PruningSpec
from worker.engine import scripting
from worker.engine.errors import EngineError
from worker.engine.shrink import prepare
from worker.engine.shrink.rewrite import zero_removed

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

HALF = PruningSpec(method="ln_structured", scope="layerwise", amount=0.5, dim=0, shrink=True)
KINDS = ["script", "trace"]


def _compile(module: nn.Module, kind: str) -> torch.jit.ScriptModule:
    module = models.randomize_batchnorm(module)
    if kind == "script":
        return scripting.script(module)
    return torch.jit.trace(module, torch.zeros(2, 1, 28, 28))


def _reload(model: nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def _shrunk_shapes_and_gap(model: torch.jit.ScriptModule) -> tuple[dict[str, Any], float]:
    """(tensor -> shape after, max |shrunk - masked| on a random batch), the shrunk model
    read back from a saved archive as a user would."""
    masked = _reload(model)
    prepared = prepare(model, HALF, None, seed=0)
    zero_removed(masked, prepared.plans)
    shrunk = prepared.apply()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = (_reload(shrunk.model)(x) - masked(x)).abs().max().item()
    return {c.name: c.shape_after for c in shrunk.report.tensors}, gap


@pytest.mark.parametrize("kind", KINDS)
def test_depthwise_conv_passes_its_group_through(kind: str) -> None:
    shapes, gap = _shrunk_shapes_and_gap(_compile(models.Depthwise(), kind))
    assert shapes["dw.weight"] == [4, 1, 3, 3]
    assert shapes["fc.weight"] == [10, 4 * 28 * 28]
    assert gap < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_grouped_conv_loses_whole_groups(kind: str) -> None:
    model = _compile(models.Grouped(), kind)
    shapes, gap = _shrunk_shapes_and_gap(_reload(model))
    assert shapes["grouped.weight"] == [4, 2, 3, 3]  # 2 of 4 groups of 2 channels
    assert shapes["conv1.weight"] == [4, 1, 3, 3]
    assert gap < 1e-4
    [plan] = [p for p in prepare(model, HALF, None, seed=0).plans if p.pruned]
    norms = [torch.linalg.vector_norm(model.state_dict()[f"{p}.weight"], HALF.n, (1, 2, 3))
             for p in ("conv1", "grouped")]
    best = (norms[0] + norms[1]).view(4, 2).sum(1).argsort(descending=True)[:2].sort().values
    assert plan.keep.tolist() == [c for b in best.tolist() for c in (2 * b, 2 * b + 1)]


@pytest.mark.parametrize("kind", KINDS)
def test_squeeze_excitation_couples_gate_and_trunk(kind: str) -> None:
    model = _compile(models.Excite(), kind)
    prepared = prepare(model, HALF, None, seed=0)
    groups = [g.group.producers for g in prepared.plans if g.pruned]
    assert ["conv", "excite"] in groups
    shapes, gap = _shrunk_shapes_and_gap(_compile(models.Excite(), kind))
    assert shapes["excite.weight"] == [4, 2, 1, 1]  # out: the trunk's half; in: squeeze's
    assert shapes["squeeze.weight"] == [2, 4, 1, 1]
    assert shapes["fc.weight"] == [10, 4]
    assert gap < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_concatenation_maps_consumer_inputs_to_its_parts(kind: str) -> None:
    shapes, gap = _shrunk_shapes_and_gap(_compile(models.Concat(), kind))
    assert shapes["fc.weight"] == [10, 4 * 28 * 28]  # 2 of a's 4 and 2 of b's 4 channels
    assert gap < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_batchnorm_over_a_growing_concatenation(kind: str) -> None:
    shapes, gap = _shrunk_shapes_and_gap(_compile(models.DenseConcat(), kind))
    assert shapes["norm2.weight"] == [3]  # stem 4 -> 2, grow1 2 -> 1
    assert shapes["grow2.weight"] == [1, 3, 3, 3]
    assert shapes["fc.weight"] == [10, 4]
    assert gap < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_bias_free_convs_are_followed(kind: str) -> None:
    """The scripted conv with bias=False reads an Optional attribute set to None."""
    model = _compile(models.ResidualNet(bias=False), kind)
    shapes, gap = _shrunk_shapes_and_gap(model)
    assert shapes["stem.weight"] == [4, 1, 3, 3]
    assert shapes["block1.conv1.weight"] == [4, 4, 3, 3]
    assert gap < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_channel_multiplier_is_refused_naming_the_layer(kind: str) -> None:
    with pytest.raises(EngineError) as caught:
        prepare(_compile(models.Multiplier(), kind), HALF, None, seed=0)
    assert caught.value.code is JobErrorCode.UNSUPPORTED_MODEL
    assert "8 output channels from 4 inputs (a channel multiplier) (layer dw)" in \
        caught.value.message


@pytest.mark.parametrize(("round_to", "kept"), [(1, 12), (8, 16), (5, 15), (32, 24)])
def test_round_to_keeps_a_multiple_of_n_channels(round_to: int, kept: int) -> None:
    """24 channels at amount 0.5 keep 12; rounded up to a multiple of round_to, at most 24."""
    model = _compile(models.ResidualNet(channels=24), "script")
    spec = HALF.model_copy(update={"round_to": round_to})
    plans = [p for p in prepare(model, spec, None, seed=0).plans if p.pruned]
    assert {p.name: p.keep.numel() for p in plans} == {
        "stem+block1.conv2+block2.conv2": kept, "block1.conv1": kept, "block2.conv1": kept}


def test_round_to_needs_shrink() -> None:
    with pytest.raises(ValueError, match="round_to rounds the channels shrink keeps"):
        PruningSpec(method="ln_structured", dim=0, round_to=8)


def test_groups_are_rewritten_inside_an_inlined_forward() -> None:
    """A scripted forward can come back inlined in place (the depthwise conv then sits in the
    top graph's `if` block); its groups must be rewritten there too."""
    model = _compile(models.BranchyDepthwise(), "script")
    torch._C._jit_pass_inline(model.graph)
    assert model.graph.findAllNodes("aten::conv2d", True)  # the convs are in forward now
    shapes, gap = _shrunk_shapes_and_gap(model)
    assert shapes["dw.weight"] == [4, 1, 3, 3]
    assert gap < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_channel_shuffle_couples_each_slots_channel(kind: str) -> None:
    """cat(a, b) shuffled in 2 groups: a's channel i and b's channel i go together, so the
    shrunk tensor is still a valid shuffle (each slot keeps the same channels)."""
    model = _compile(models.Shuffle(groups=2), kind)
    shapes, gap = _shrunk_shapes_and_gap(_reload(model))
    assert shapes["a.weight"] == [4, 1, 3, 3] and shapes["b.weight"] == [4, 1, 3, 3]
    assert shapes["c.weight"] == [2, 8, 3, 3]  # its own 4 filters halved too
    assert gap < 1e-4
    [plan] = [p for p in prepare(model, HALF, None, seed=0).plans if "a" in p.group.producers]
    assert plan.group.producers == ["a", "b"] and plan.group.channels == 8
    state = model.state_dict()
    norms = sum(torch.linalg.vector_norm(state[f"{p}.weight"], 2, (1, 2, 3)) for p in "ab")
    assert plan.keep.tolist() == sorted(norms.argsort(descending=True)[:4].tolist())


@pytest.mark.parametrize("kind", KINDS)
def test_channel_shuffle_in_four_groups_couples_within_a_conv(kind: str) -> None:
    """16 channels in 4 slots of 4: a's channels i and i + 4 sit in two slots at the same
    place, so they are removed together, as are b's."""
    model = _compile(models.Shuffle(groups=4), kind)
    shapes, gap = _shrunk_shapes_and_gap(_reload(model))
    assert shapes["a.weight"] == [4, 1, 3, 3] and shapes["c.weight"] == [2, 8, 3, 3]
    assert gap < 1e-4
    [plan] = [p for p in prepare(model, HALF, None, seed=0).plans if "a" in p.group.producers]
    assert plan.group.channels == 4  # units: {a_i, a_i+4, b_i, b_i+4} for i < 4
    [piece] = [s for s in plan.group.slices if s.tensor == "a.weight"]
    assert piece.pairs == ((0, 0), (1, 1), (2, 2), (3, 3), (0, 4), (1, 5), (2, 6), (3, 7))


@pytest.mark.parametrize("kind", KINDS)
def test_chunk_and_shuffle_as_in_shufflenet(kind: str) -> None:
    """Two ShuffleNetV2 units: each chunk couples the halves' channels position by position,
    each shuffle its slots; the Linear after the flatten follows the permuted channels."""
    model = _compile(models.SplitShuffle(), kind)
    shapes, gap = _shrunk_shapes_and_gap(model)
    assert gap < 1e-4
    assert shapes["branch1.0.weight"] == [4, 4, 1, 1]  # its own channels, and its input's
    assert shapes["fc.weight"][1] % (2 * 7 * 7) == 0  # a multiple of the shuffle's groups


@pytest.mark.parametrize("kind", KINDS)
def test_shuffle_with_constant_sizes_is_made_to_follow(kind: str) -> None:
    """view(n, 2, 4, ...) ... view(n, 8, ...): the constants become x.size(1) // 2 and
    x.size(1) in the shrunk archive, which runs exactly on 4 of the 8 channels."""
    model = _compile(models.FixedShuffle(), kind)
    shapes, gap = _shrunk_shapes_and_gap(model)
    assert shapes["conv.weight"] == [4, 1, 3, 3] and shapes["fc.weight"] == [10, 4]
    assert gap < 1e-4


def test_shuffle_with_constant_sizes_in_a_function_is_refused() -> None:
    """Scripted, a free function's graph is not edited: refused, naming the line."""
    with pytest.raises(EngineError) as caught:
        prepare(_compile(models.FixedShuffleFunction(), "script"), HALF, None, seed=0)
    assert caught.value.code is JobErrorCode.UNSUPPORTED_MODEL
    message = caught.value.message
    assert "writes its channel counts as constants, in code shrink cannot edit" in message
    assert "models.py:263: x = x.view(x.size(0), 2, 4, 28, 28)" in message
    traced = _compile(models.FixedShuffleFunction(), "trace")  # traced, it is inlined
    assert _shrunk_shapes_and_gap(traced)[1] < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_shuffle_with_inferred_channels(kind: str) -> None:
    """view(n, 2, -1, h, w) ... view(n, -1, h, w) with h, w read from the tensor: exact."""
    shapes, gap = _shrunk_shapes_and_gap(_compile(models.InferredShuffle(), kind))
    assert shapes["conv.weight"] == [4, 1, 3, 3] and gap < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_shuffle_whose_minus_one_may_take_spatial_entries_is_refused(kind: str) -> None:
    with pytest.raises(EngineError) as caught:
        prepare(_compile(models.InferredShuffleFixedSpatial(), kind), HALF, None, seed=0)
    assert caught.value.code is JobErrorCode.UNSUPPORTED_MODEL
    assert "reach aten::view" in caught.value.message


@pytest.mark.parametrize("kind", KINDS)
def test_shuffle_sized_by_another_tensor_is_refused(kind: str) -> None:
    """The view's sizes come from a tensor with other channels: not a shuffle of its own."""
    with pytest.raises(EngineError) as caught:
        prepare(_compile(models.ForeignSize(), kind), HALF, None, seed=0)
    assert caught.value.code is JobErrorCode.UNSUPPORTED_MODEL
    assert "cannot remove channels of a (asked for by a.weight): they reach aten::view" in \
        caught.value.message


@pytest.mark.parametrize("kind", KINDS)
def test_uneven_chunk_is_refused(kind: str) -> None:
    with pytest.raises(EngineError) as caught:
        prepare(_compile(models.UnevenChunk(), kind), HALF, None, seed=0)
    assert "a chunk of 8 channels into 3 unequal pieces" in caught.value.message


@pytest.mark.parametrize(("kind", "op"), [("script", "aten::split"),
                                        ("trace", "aten::split_with_sizes")])
def test_split_with_explicit_sizes_is_refused_naming_the_op_and_line(kind: str, op: str) -> None:
    """Nothing vanishes: the conv whose channels reach the split is refused, not skipped."""
    with pytest.raises(EngineError) as caught:
        prepare(_compile(models.SplitSizes(), kind), HALF, None, seed=0)
    assert caught.value.code is JobErrorCode.UNSUPPORTED_MODEL
    message = caught.value.message
    assert f"cannot remove channels of conv (asked for by conv.weight): they reach {op}" in message
    line = next(i for i, text in enumerate(Path(models.__file__).read_text().splitlines(), 1)
                if "torch.split(F.relu(self.conv(x)), [6, 2], dim=1)" in text)
    assert f"models.py:{line}" in message


RESIDUAL = "stem+block1.conv2+block2.conv2"  # the residual trunk's group, as reports name it


def _kept_per_group(overrides: dict[str, float], round_to: int = 1,
                    exclude: tuple[str, ...] = ()) -> dict[str, int]:
    model = _compile(models.ResidualNet(channels=24), "script")
    spec = HALF.model_copy(update={"overrides": overrides, "round_to": round_to,
                                   "exclude": list(exclude)})
    return {p.name: p.keep.numel() for p in prepare(model, spec, None, seed=0).plans
            if p.pruned}


@pytest.mark.parametrize(("overrides", "round_to", "kept"), [
    ({RESIDUAL: 0.25}, 1, {RESIDUAL: 18, "block1.conv1": 12, "block2.conv1": 12}),
    ({"stem+*": 0.75}, 8, {RESIDUAL: 8, "block1.conv1": 16, "block2.conv1": 16}),
    ({"block?.conv1": 0.25, "*": 0.75}, 1, {RESIDUAL: 6, "block1.conv1": 18,
                                            "block2.conv1": 18}),
    ({"stem.weight": 0.25}, 1, {RESIDUAL: 18, "block1.conv1": 12, "block2.conv1": 12}),
    ({"block1.conv2.weight": 0.25}, 1, {RESIDUAL: 18, "block1.conv1": 12,
                                        "block2.conv1": 12}),
    ({RESIDUAL.replace("+", " + "): 0.25}, 1, {RESIDUAL: 18, "block1.conv1": 12,
                                                "block2.conv1": 12}),  # as the page shows it
])
def test_overrides_name_groups(overrides: dict[str, float], round_to: int,
                               kept: dict[str, int]) -> None:
    """24 channels per group: an override names a group (producers joined by '+', fnmatch,
    first matching pattern wins) or one of its producers' weights; round_to rounds its
    count kept up like the spec's amount."""
    assert _kept_per_group(overrides, round_to) == kept


def test_override_naming_nothing_lists_the_groups() -> None:
    with pytest.raises(EngineError) as caught:
        _kept_per_group({"block3*": 0.25})
    assert caught.value.code is JobErrorCode.INVALID_SPEC
    assert "pruning.overrides['block3*'] names no channel group" in caught.value.message
    assert (f"the groups shrink can prune: '{RESIDUAL}', 'block1.conv1', 'block2.conv1'" in
            caught.value.message)


def test_override_of_an_excluded_layer_says_so() -> None:
    with pytest.raises(EngineError) as caught:
        _kept_per_group({"block1.conv1.weight": 0.25}, exclude=("block1.conv1.weight",))
    assert caught.value.code is JobErrorCode.INVALID_SPEC
    assert "block1.conv1.weight is not targeted (pruning.include / pruning.exclude)" in \
        caught.value.message
