"""Apply a shrink plan: slice the tensors, and put them into a smaller module.

Two kinds of module come in. A registry architecture is rebuilt with its new widths
(``registry.build(name, widths)``) and loads the sliced state_dict strictly, which proves the
widths describe the tensors. A TorchScript module keeps its code: its Conv/Linear/BatchNorm
forwards read the shapes from the tensors themselves, so swapping in the smaller parameters
and buffers gives a module that runs with the new shapes and saves as an ordinary archive.
(Scripted submodules keep their old ``in_channels``/``out_channels`` constants, which their
forwards never read.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.jobs.architectures import ARCHITECTURES
from worker.engine import registry
from worker.engine.script_copy import reloaded
from worker.engine.shrink.fx_graph import Const, arguments, aten_op, op_name
from worker.engine.shrink.graph import constant
from worker.engine.shrink.ops import CONV, conv_groups
from worker.engine.shrink.plan import GroupPlan
from worker.engine.shrink.script_nodes import source_key
from worker.engine.shrink.state import ChannelGraph, Slice


def _indices(channels: torch.Tensor, piece: Slice) -> torch.Tensor:
    """A slice's entries for ``channels``: ``inner`` per channel, after ``offset`` channels
    (or at the positions its ``pairs`` give them)."""
    if piece.pairs is not None:
        units, at = torch.tensor(piece.pairs, dtype=torch.long).reshape(-1, 2).T
        first: torch.Tensor = at[torch.isin(units, channels)] * piece.inner
    else:
        first = (channels + piece.offset) * piece.inner
    if piece.inner == 1:
        return first
    return (first[:, None] + torch.arange(piece.inner)).flatten()


def _removed(plan: GroupPlan) -> torch.Tensor:
    gone = torch.ones(plan.group.channels, dtype=torch.bool)
    gone[plan.keep] = False
    return torch.nonzero(gone).flatten()


def sliced_tensors(
    tensors: dict[str, torch.Tensor], plans: list[GroupPlan]
) -> dict[str, torch.Tensor]:
    """The new value of every tensor a pruned group slices (others are unchanged). A tensor
    may be cut by several groups along one dimension (a consumer of a concatenation): the
    entries all of them remove go at once."""
    removed: dict[tuple[str, int], list[torch.Tensor]] = {}
    for plan in plans:
        if plan.pruned:
            gone = _removed(plan)
            for piece in plan.group.slices:
                removed.setdefault((piece.tensor, piece.dim), []).append(_indices(gone, piece))
    out: dict[str, torch.Tensor] = {}
    for (name, dim), pieces in removed.items():
        current = out.get(name, tensors[name]).detach()
        keep = torch.ones(tensors[name].shape[dim], dtype=torch.bool)
        keep[torch.cat(pieces)] = False
        index = torch.nonzero(keep).flatten().to(current.device)
        out[name] = current.index_select(dim, index).contiguous()
    return out


@torch.no_grad()
def zero_removed(module: nn.Module, plans: list[GroupPlan]) -> None:
    """The masked model: zero every producer-side slice of the removed channels (filters,
    biases, BatchNorm scale and shift), so each removed channel outputs exactly 0 and the
    shrunk model computes the same function."""
    state = module.state_dict()
    for plan in plans:
        if not plan.pruned:
            continue
        gone = _removed(plan)
        for piece in plan.group.slices:
            if piece.dim != 0 or piece.tensor.endswith(("running_mean", "running_var")):
                continue
            tensor = state[piece.tensor]
            tensor[_indices(gone, piece).to(tensor.device)] = 0


def generic_groups(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """A copy of ``module`` whose grouped convs compute ``groups`` from their tensors,
    ``in_channels // weight.size(1)``, instead of a constant: a depthwise or grouped conv
    that lost whole groups runs with the new count. The code is edited in every method's
    graph of a reloaded copy (its own compilation unit: a module scripted in this process
    shares its compiled methods with every module of the same type, which must not change),
    then saved and loaded again (the interpreter keeps plans of the old graphs; a saved
    archive prints the edited ones)."""
    copy = reloaded(module)
    for sub in copy.modules():
        if isinstance(sub, torch.jit.ScriptModule):
            for name in sub._c._method_names():
                _patch_groups(sub._c._get_method(name).graph)
    return reloaded(copy)


def _patch_groups(graph: Any) -> None:  # torch._C.Graph: its insert API is not in the stubs
    """Every conv node, inside nested blocks too (an inlined forward's ``if``)."""
    for node in [n for kind in sorted(CONV) for n in graph.findAllNodes(kind, True)]:
        ins = list(node.inputs())
        at = 8 if node.kind() == "aten::_convolution" else 6
        values = [constant(v) for v in ins]
        groups = conv_groups(node.kind(), values.__getitem__)
        if groups is None or groups <= 1:  # computed already, transposed, or plain
            continue
        with graph.insert_point_guard(node):
            one = graph.insertConstant(1)
            count = graph.insert("aten::floordiv", [graph.insert("aten::size", [ins[0], one]),
                                                   graph.insert("aten::size", [ins[1], one])])
        node.replaceInput(at, count)


_VIEWS = ("aten::view", "aten::reshape")


def generic_shuffles(module: torch.jit.ScriptModule,
                     where: set[str]) -> tuple[torch.jit.ScriptModule, set[str]]:
    """A copy of ``module`` whose channel shuffles at ``where`` (``source_key``s of those the
    analysis found written with constant channel counts equal to the channels there: a
    traced ``x.data.size()``, literal code) compute them from ``x.size(1)`` instead, so they
    follow removed channels; and the locations it edited. Edited in every method graph of a
    reloaded copy, then saved and loaded again, as ``generic_groups`` does; a shuffle in a
    free function (scripted) is not a method's, and is left."""
    copy = reloaded(module)
    done: set[str] = set()
    for sub in copy.modules():
        if isinstance(sub, torch.jit.ScriptModule):
            for name in sub._c._method_names():
                done |= _patch_shuffles(sub._c._get_method(name).graph, where)
    return reloaded(copy), done


def _patch_shuffles(graph: Any, where: set[str]) -> set[str]:  # graph: torch._C.Graph
    done = set()
    for split in [n for kind in _VIEWS for n in graph.findAllNodes(kind, True)]:
        found = _shuffle_sizes(split) if source_key(split) in where else None
        if found is None:
            continue
        sizes, merge_sizes = found
        source = split.inputsAt(0)
        if _const_int(sizes.inputsAt(2)) not in (None, -1):
            with graph.insert_point_guard(sizes):
                channels = graph.insert("aten::size", [source, graph.insertConstant(1)])
                sizes.replaceInput(2, graph.insert("aten::floordiv",
                                                   [channels, sizes.inputsAt(1)]))
        if _const_int(merge_sizes.inputsAt(1)) not in (None, -1):
            with graph.insert_point_guard(merge_sizes):
                merge_sizes.replaceInput(1, graph.insert("aten::size",
                                                         [source, graph.insertConstant(1)]))
        done.add(source_key(split))
    return done


def _shuffle_sizes(split: Any) -> tuple[Any, Any] | None:
    """(the split view's size list, the merging view's) when ``split`` starts
    ``view(n, g, c, ...)`` -> ``transpose(1, 2)`` [-> ``contiguous``] -> ``view(n, C, ...)``,
    its input defined before its sizes (and, where the graph knows shapes, g * c channels)."""
    sizes = split.inputsAt(1).node()
    if sizes.kind() != "prim::ListConstruct" or sizes.inputsSize() < 3:
        return None
    source = split.inputsAt(0)
    if not source.node().isBefore(sizes):
        return None
    known = source.type().sizes() if isinstance(source.type(), torch.TensorType) else None
    groups, width = _const_int(sizes.inputsAt(1)), _const_int(sizes.inputsAt(2))
    if known and len(known) > 1 and None not in (groups, width) and width != -1 and (
            known[1] != (groups or 0) * (width or 0)):
        return None
    after = _only_use(split.output())
    if after is None or after.kind() != "aten::transpose" or {
            _const_int(v) for v in list(after.inputs())[1:]} != {1, 2}:
        return None
    merge = _only_use(after.output())
    if merge is not None and merge.kind() == "aten::contiguous":
        merge = _only_use(merge.output())
    if merge is None or merge.kind() not in _VIEWS:
        return None
    merge_sizes = merge.inputsAt(1).node()
    if merge_sizes.kind() != "prim::ListConstruct" or merge_sizes.inputsSize() < 2 or \
            not source.node().isBefore(merge_sizes):
        return None
    return sizes, merge_sizes


def _const_int(value: Any) -> int | None:
    node = value.node()
    while node.kind() in ("aten::Int", "prim::NumToTensor"):
        value = node.inputsAt(0)
        node = value.node()
    if node.kind() != "prim::Constant":
        return None
    fixed = value.toIValue()
    if isinstance(fixed, torch.Tensor) and fixed.numel() == 1:
        return int(fixed.item())
    return fixed if isinstance(fixed, int) and not isinstance(fixed, bool) else None


def _only_use(value: Any) -> Any:
    """The one node that reads ``value`` beyond its size (None if several do)."""
    users = [u.user for u in value.uses() if u.user.kind() != "aten::size"]
    return users[0] if len(users) == 1 else None


def swap_tensors(module: nn.Module, new: dict[str, torch.Tensor]) -> None:
    """Replace parameters and buffers of a TorchScript module or an exported program's module
    by name, in place."""
    parameters = dict(module.named_parameters())
    for name, tensor in new.items():
        *path, attr = name.split(".")
        owner: nn.Module = module
        for part in path:
            owner = getattr(owner, part)
        if name in parameters:
            value: torch.Tensor = nn.Parameter(tensor, requires_grad=parameters[name].requires_grad)
        else:
            value = tensor
        setattr(owner, attr, value)


def follow_shapes(module: torch.fx.GraphModule, graph: ChannelGraph) -> None:
    """An exported program's constants that held the old widths, in place: a grouped conv's
    ``groups`` scaled with its filters (a group keeps its width), and flatten's fixed size in
    a core-ATen ``view`` made -1."""
    free = set(graph.free_sizes)
    for node in module.graph.nodes:
        if node.name in free:
            node.update_arg(1, [node.args[1][0], -1])
        kind = op_name(node)
        op = aten_op(node)
        if op is None or kind not in CONV:
            continue
        args = arguments(node, op)
        values = [a.value if isinstance(a, Const) else None for a in args]
        groups = conv_groups(str(kind), values.__getitem__)
        weight = args[1]
        if groups is None or groups <= 1 or not isinstance(weight, torch.fx.Node):
            continue
        out = int(module.get_parameter(str(weight.target)).shape[0])
        new = groups * out // graph.tensor_shapes[str(weight.target)][0]
        at = 8 if kind == "aten::_convolution" else 6
        if len(node.args) > at:
            node.update_arg(at, new)
        else:
            node.update_kwarg("groups", new)
    module.recompile()


def rebuild_registry(
    architecture: str, module: nn.Module, new: dict[str, torch.Tensor], widths: dict[str, int]
) -> nn.Module:
    """A fresh registry module with ``widths`` holding the module's (sliced) state."""
    state = {**module.state_dict(), **new}
    rebuilt = registry.build(architecture, widths)
    rebuilt.load_state_dict(state, strict=True)
    first = next(module.parameters())
    return rebuilt.to(first.device)


def registry_widths(architecture: str, tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Layer -> output width, read from the (sliced) weights, for the layers the registry
    module takes as constructor arguments."""
    return {layer: int(tensors[f"{layer}.weight"].shape[0])
            for layer in ARCHITECTURES[architecture].widths}
