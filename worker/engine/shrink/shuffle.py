"""Channel split and channel shuffle (ShuffleNetV2): ops that move channels to new positions
without mixing them, and what they couple so that the shrunk model computes what the masked
one does with the same code.

- ``x.chunk(n, dim=1)``: piece i carries positions ``[i*C/n, (i+1)*C/n)``. The shrunk tensor
  is cut into n equal pieces again, so every piece must keep as many channels as the others:
  position j of each piece is coupled with position j of the others (removed together).
- a channel shuffle with ``g`` groups, ``x.view(N, g, C // g, *rest)``, then
  ``transpose(1, 2)`` (a ``contiguous()`` may follow), then ``view(N, C, *rest)`` or
  ``flatten(1, 2)``: output position ``b*g + a`` is input position ``a*(C/g) + b``. The same
  code shuffles the shrunk tensor; that equals the masked shuffle with the removed channels
  left out only if every slot ``a`` keeps the same ``b``'s, so the g channels at positions
  ``a*(C/g) + b`` (one per slot) are coupled, and the kept count stays a multiple of g.
- the views' sizes must follow the channels: the batch entry is computed from ``size(0)``,
  the channel entries from ``x.size(1)`` (scripted code does so, and so do traced graphs of
  ``x.size()``) or are constants equal to them (a traced ``x.data.size()``, literal code),
  which ``rewrite.generic_shuffles`` replaces by ``x.size(1)`` expressions.

These rules read TorchScript nodes (``graph.ScriptAnalysis.moved`` calls them); an exported
program's chunk and shuffle stop at the shared rules and are refused, naming the op.
"""

from __future__ import annotations

import torch

from worker.engine.shrink.ops import Layout, Opaque, State
from worker.engine.shrink.script_nodes import constant, source_key
from worker.engine.shrink.state import AnalysisBase

ScriptWalk = AnalysisBase[torch._C.Node, torch._C.Value]  # the analysis of graph.py

__all__ = ["chunk", "follow"]

CHUNK = frozenset({"aten::chunk", "aten::unsafe_chunk"})
_RESHAPE = frozenset({"aten::view", "aten::reshape"})
_COPY = frozenset({"aten::contiguous", "aten::clone", "aten::detach"})
# traced graphs wrap sizes in tensors and back
_WRAPPERS = frozenset({"aten::Int", "prim::NumToTensor", "aten::ScalarImplicit",
                       "aten::IntImplicit"})
_DIVIDE = frozenset({"aten::floordiv", "aten::floor_divide", "aten::div"})


def chunk(an: ScriptWalk, ins: list[torch._C.Value], state: State) -> list[State]:
    """The states of ``x.chunk(n, dim)``'s pieces, their positions coupled across pieces."""
    pieces, dim = constant(ins[1]), constant(ins[2])
    if (state.flat or state.shuffle is not None or state.rank is None
            or not isinstance(dim, int) or dim % state.rank != 1):
        raise Opaque("a chunk along a dimension other than the channels")
    layout = an.layout(state)
    if not isinstance(pieces, int) or pieces < 1 or len(layout) % pieces:
        raise Opaque(f"a chunk of {len(layout)} channels into {pieces} unequal pieces")
    size = len(layout) // pieces
    parts = [layout[i * size:(i + 1) * size] for i in range(pieces)]
    for part in parts[1:]:
        for x, y in zip(parts[0], part, strict=True):
            an.couple_channels(x, y)
    return [an.make_state(part, state.rank, nonzero=state.nonzero) for part in parts]


def follow(an: ScriptWalk, node: torch._C.Node, ins: list[torch._C.Value], state: State,
           first: bool) -> State | None:
    """The state after a shuffle's step, None if ``node`` is not one (and the tensor is not
    midway through a shuffle); Opaque for anything else done midway."""
    kind = node.kind()
    if state.shuffle is None:
        if kind in _RESHAPE and first:
            return _split(an, node, ins, state)
        return None
    groups, transposed, start = state.shuffle
    assert state.rank is not None  # a shuffle starts from a known rank
    if kind in _COPY and first:
        return state
    if kind == "aten::transpose" and first and not transposed:
        dims = {constant(ins[1]), constant(ins[2])}
        if all(isinstance(d, int) for d in dims) and {
                d % state.rank for d in dims if isinstance(d, int)} == {1, 2}:
            return State(state.parts, state.rank, nonzero=state.nonzero, layout=state.layout,
                         shuffle=(groups, True, start))
    if transposed and first and (kind in _RESHAPE or kind == "aten::flatten"):
        return _merge(an, kind, ins, state, groups, start)
    raise Opaque("midway through a channel shuffle: only transpose(1, 2), contiguous() and "
                 "a reshape that merges dims 1 and 2 are followed")


def _split(an: ScriptWalk, node: torch._C.Node, ins: list[torch._C.Value],
           state: State) -> State | None:
    """``x.view(N, g, C // g, *rest)``: the start of a channel shuffle (None: another
    reshape, left to the flatten rule). ``C // g`` may be a constant equal to it, which the
    rewrite replaces (``rewrite.generic_shuffles``)."""
    items = _items(ins[1])
    if state.flat or state.rank is None or items is None or len(items) != state.rank + 1:
        return None
    groups, channels = _int(items[1], an), an.channels(state)
    if groups is None or groups < 2 or channels % groups or not _batch(an, items[0]):
        return None
    start = source_key(node)
    width = _int(items[2])
    if width == -1:  # x.view(n, g, -1, h, w): C // g if the rest are the spatial sizes
        if not _spatial(an, items[3:]):
            return None
    elif width is not None:
        if width * groups != channels:
            return None
        an.constant_shuffles.setdefault(start, set()).update(state.parts)
    elif not _divided(an, items[2], state, groups):
        return None
    return State(state.parts, state.rank + 1, nonzero=state.nonzero,
                 layout=an.layout(state), shuffle=(groups, False, start))


def _merge(an: ScriptWalk, kind: str, ins: list[torch._C.Value], state: State,
           groups: int, start: str) -> State:
    """``view(N, C, *rest)`` / ``flatten(1, 2)`` after the transpose: the shuffled channels."""
    assert state.rank is not None
    layout = an.layout(state)
    channels = len(layout)
    if kind == "aten::flatten":
        if [constant(ins[1]), constant(ins[2])] != [1, 2]:
            raise Opaque("a flatten that does not merge dims 1 and 2 of a channel shuffle")
    else:
        items = _items(ins[1])
        if items is None or len(items) != state.rank - 1 or not _batch(an, items[0]):
            raise Opaque("a reshape after a channel shuffle's transpose that does not merge "
                         "dims 1 and 2 back into the channels")
        fixed = _int(items[1])
        if fixed == -1 and not _spatial(an, items[2:]):
            raise Opaque("a reshape after a channel shuffle's transpose whose -1 may take "
                         "more than the channels: give the spatial sizes as x.size(2), ...")
        if fixed not in (-1, None) and fixed != channels:
            raise Opaque(f"a channel shuffle's merge into {fixed} channels, not its {channels}")
        if fixed is None and not _size(an, items[1], 1, state):
            raise Opaque("a channel shuffle whose channel count is not x.size(1)")
        if fixed not in (-1, None):
            an.constant_shuffles.setdefault(start, set()).update(state.parts)
    width = channels // groups
    for b in range(width):
        for a in range(1, groups):
            an.couple_channels(layout[b], layout[a * width + b])
    shuffled: Layout = tuple(layout[a * width + b] for b in range(width) for a in range(groups))
    return an.make_state(shuffled, state.rank - 1, nonzero=state.nonzero)


def _items(value: torch._C.Value) -> list[torch._C.Value] | None:
    node = value.node()
    return list(node.inputs()) if node.kind() == "prim::ListConstruct" else None


def _unwrap(value: torch._C.Value) -> torch._C.Value:
    while value.node().kind() in _WRAPPERS:
        value = next(value.node().inputs())
    return value


def _int(value: torch._C.Value, an: ScriptWalk | None = None) -> int | None:
    """A constant int (a traced graph's may be a one-element tensor), or a module's int
    attribute no code assigns (with ``an``), else None."""
    value = _unwrap(value)
    attribute = an.fixed(value) if an is not None else None
    fixed = constant(value) if attribute is None else attribute
    if isinstance(fixed, torch.Tensor) and fixed.numel() == 1 and not fixed.is_floating_point():
        return int(fixed.item())
    return fixed if isinstance(fixed, int) and not isinstance(fixed, bool) else None


def _size_of(value: torch._C.Value) -> tuple[torch._C.Value, int] | None:
    """(tensor, dim) when ``value`` is ``tensor.size(dim)`` (scripted: an item of
    ``tensor.size()`` unpacked or indexed; traced: ``aten::size(tensor, dim)``)."""
    value = _unwrap(value)
    node = value.node()
    if node.kind() == "aten::size" and node.inputsSize() == 2:
        dim = _int(list(node.inputs())[1])
        return (next(node.inputs()), dim) if dim is not None else None
    source = next(node.inputs(), None) if node.kind() in ("prim::ListUnpack",
                                                         "aten::__getitem__") else None
    if source is None or source.node().kind() != "aten::size" or source.node().inputsSize() != 1:
        return None
    tensor = source.node().input()
    if node.kind() == "prim::ListUnpack":
        return tensor, list(node.outputs()).index(value)
    index = _int(list(node.inputs())[1])
    return (tensor, index) if index is not None else None


def _size(an: ScriptWalk, value: torch._C.Value, dim: int, state: State) -> bool:
    """``value`` is ``t.size(dim)`` of a tensor ``t`` that carries the channels of
    ``state`` (in any order), so that its size is theirs after shrinking too."""
    found = _size_of(value)
    if found is None or found[1] != dim or found[0] not in an.states:
        return False
    return sorted(an.channel_key(an.states[found[0]])) == sorted(an.channel_key(state))


def _spatial(an: ScriptWalk, items: list[torch._C.Value]) -> bool:
    """``items`` are ``t.size(2), t.size(3), ...`` of a channel tensor ``t`` (its dims after
    the channels; after a shuffle's split, after its two channel dims)."""
    for i, item in enumerate(items):
        found = _size_of(item)
        if found is None or found[0] not in an.states:
            return False
        first = 3 if an.states[found[0]].shuffle is not None else 2
        if found[1] != first + i:
            return False
    return True


def _batch(an: ScriptWalk, value: torch._C.Value) -> bool:
    found = _size_of(value)
    return found is not None and found[1] == 0 and found[0] in an.states


def _divided(an: ScriptWalk, value: torch._C.Value, state: State, groups: int) -> bool:
    """``value`` is ``t.size(1) // groups`` of a tensor carrying ``state``'s channels."""
    node = _unwrap(value).node()
    if node.kind() not in _DIVIDE:
        return False
    ins = list(node.inputs())
    if node.kind() == "aten::div" and (len(ins) < 3 or constant(ins[2]) not in ("floor",
                                                                                 "trunc")):
        return False
    return _int(ins[1], an) == groups and _size(an, ins[0], 1, state)
