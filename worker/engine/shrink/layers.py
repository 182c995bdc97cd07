"""The rules for layers that own weights: Conv and Linear (plain, grouped, depthwise) and
BatchNorm (DepGraph's rules, Fang et al. CVPR 2023), for both front ends.

- A plain Conv/Linear consumes its input's channels (weight dim 1, at each concatenated
  part's offset; after a flatten, ``inner`` entries per channel) and opens a new group with
  its output channels (weight and bias dim 0).
- A depthwise conv (groups = in = out channels) passes its input's group straight through:
  output channel c reads input channel c only, so both go together; its filters join the
  group (weight and bias dim 0), position by position after a channel shuffle. A grouped
  conv with in = out channels does the same in aligned blocks of the group width: whole
  groups go, never part of one.
- BatchNorm slices its four vectors by the channels it normalises.
"""

from __future__ import annotations

from dataclasses import replace
from math import lcm

from worker.engine.shrink.ops import CONV, TRANSPOSED, Opaque, State, conv_groups
from worker.engine.shrink.state import AnalysisBase, N, V


def _module(weight: str) -> str:
    return weight.rsplit(".", 1)[0] if "." in weight else ""


def layer(an: AnalysisBase[N, V], node: N, ins: list[V]) -> None:
    """Conv/Linear: consumes its input's group (weight dim 1), produces a new group."""
    kind = an.kind(node)
    weight, bias = an.param(ins[1]), an.param(ins[2])
    if weight is None:
        raise Opaque("a layer without a weight")
    name = _module(weight)
    shape = list(an.tensors[weight].shape)
    source = an.states.get(ins[0])
    if source is not None and source.shuffle is not None:
        raise Opaque("a layer midway through a channel shuffle")
    conv = kind in CONV
    groups = conv_groups(kind, lambda i: an.constant(ins[i])) if conv else 1
    if kind in TRANSPOSED or groups == 0:
        _refuse(an, name, f"{kind} transposed: its output channels are weight dim 1", node,
                source)
        return
    if groups is None:
        _refuse(an, name, f"{kind} with groups that are not a constant", node, source)
        return
    if groups != 1:
        grouped(an, node, name, shape, groups, (weight, bias), source)
        return
    if source is not None:
        consume(an, node, source, shape, weight, conv)
    group = an.new_group(shape[0], name)
    an.add_slice(group, weight, 0)
    an.add_slice(group, bias, 0)
    rank = len(shape) if conv else an.rank(ins[0])
    an.states[an.output(node)] = State((group,), rank)


def _refuse(an: AnalysisBase[N, V], name: str, why: str, node: N,
            source: State | None) -> None:
    an.refuse(name, why, node)
    if source is not None:
        an.block_state(source, f"{why} (layer {name})", node)


def grouped(an: AnalysisBase[N, V], node: N, name: str, shape: list[int], groups: int,
            params: tuple[str, str | None], source: State | None) -> None:
    """Depthwise / grouped conv: input and output channels are one group, cut in whole
    blocks of ``out / groups`` channels (1 for depthwise)."""
    out, width = shape[0], shape[1]  # weight: (out, in / groups, k, k)
    why = None
    roots = {an.find(g) for g in source.parts} if source is not None else set()
    if source is None:
        why = ("its input's channels are not followed (the model's input, or after an op "
               "the analysis stopped at)")
    elif len(roots) != 1 or (out != groups and len(source.parts) != 1):
        why = "its input is a concatenation"
    elif out != width * groups:
        why = f"{out} output channels from {width * groups} inputs (a channel multiplier)"
    elif out != groups and source.layout is not None:
        why = "its input's channels were shuffled or split, and its groups must stay whole"
    if why is not None or source is None:
        _refuse(an, name, f"{an.kind(node)} with groups={groups}: {why}", node, source)
        return
    group = roots.pop()
    an.groups[group].block = lcm(an.groups[group].block, out // groups)
    if name not in an.groups[group].producers:
        an.groups[group].producers.append(name)
    an.slice_state(source, params[0], 0)
    an.slice_state(source, params[1], 0)
    an.grouped = True
    an.states[an.output(node)] = State(source.parts, len(shape), layout=source.layout)


def consume(an: AnalysisBase[N, V], node: N, source: State, shape: list[int],
            weight: str, conv: bool) -> None:
    """The layer's input channels (weight dim 1) follow the source's groups."""
    if source.nonzero is not None:
        an.block_state(source, f"{weight} reads channels that {source.nonzero} made "
                       "non-zero", node)
        return
    channels = an.channels(source)
    if conv or not source.flat:
        if not conv and source.rank != 2:
            an.block_state(source, "a Linear applied to a tensor whose last dimension "
                           "is not the channel dimension", node)
            return
        if shape[1] != channels:
            an.block_state(source, f"{weight} expects {shape[1]} inputs", node)
            return
        an.slice_state(source, weight, 1)
        return
    if shape[1] % channels:
        an.block_state(source, f"{weight}'s {shape[1]} inputs are not a multiple of "
                       f"{channels} channels", node)
        return
    an.slice_state(source, weight, 1, shape[1] // channels)


def batch_norm(an: AnalysisBase[N, V], node: N, ins: list[V]) -> None:
    """Slices weight, bias, running mean and var; a removed channel comes out 0 again (its
    weight and bias are zeroed in the masked model)."""
    source = an.states.get(ins[0])
    if source is None:
        return
    if source.shuffle is not None:
        raise Opaque("midway through a channel shuffle")
    names = [an.param(value) for value in ins[1:5]]  # weight, bias, mean, var
    if names[0] is None or names[1] is None:  # 0 would come out as -mean/std, not 0
        raise Opaque("BatchNorm without affine weight and bias")
    for name in names:
        an.slice_state(source, name, 0)
    an.states[an.output(node)] = replace(source, nonzero=None)
