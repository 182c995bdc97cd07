"""What the channel analysis records: groups, the tensor slices they imply, the state of each
graph value, and the union-find with its bookkeeping that every rule module shares.

The analysis has two front ends, one set of rules: ``graph.py`` walks a TorchScript graph,
``fx_graph.py`` an exported program's FX graph. Both see the same ATen ops with the same
argument positions; each implements the few hooks below that read a node or a value (its op
name, a constant argument, a rank, a parameter's name, a source location), and the rules
(``rules.py``, ``layers.py``) read nodes through these hooks only.

Besides whole groups, the union-find couples single channels: a chunk or a channel shuffle
(``shuffle.py``) ties channel j of one group to channel k of another, so a merged group is
counted in *units*, the channel sets removed together (``_merged``), and a tensor's slices
after such ops list ``(unit, position)`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from worker.engine.shrink.ops import Layout, State

N = TypeVar("N")  # a graph node: torch._C.Node or torch.fx.Node
V = TypeVar("V", bound=Hashable)  # a value: torch._C.Value, or an FX node or constant


@dataclass(frozen=True)
class Slice:
    """Tensor ``tensor`` is indexed along ``dim`` by a group's channels: channel ``c`` owns
    entries ``(offset + c) * inner ... + inner - 1`` (``inner`` > 1: a Linear after flatten,
    C*H*W; ``offset`` > 0: the group's place in a concatenation). After a chunk or channel
    shuffle, ``pairs`` lists ``(channel, position)`` instead: channel ``c`` owns entries
    ``position * inner ...`` for each of its pairs (a channel of a merged group may own
    several positions: channels a shuffle couples are one)."""

    tensor: str
    dim: int
    inner: int = 1
    offset: int = 0
    pairs: tuple[tuple[int, int], ...] | None = None

    def positions(self, channels: int) -> list[tuple[int, int]]:
        """(channel, position) of every entry block, for a group of ``channels``."""
        if self.pairs is not None:
            return list(self.pairs)
        return [(c, self.offset + c) for c in range(channels)]


@dataclass
class Group:
    """Channels that must be removed together."""

    id: int
    channels: int
    producers: list[str] = field(default_factory=list)  # module paths: "layer1.conv1"
    slices: list[Slice] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)  # why it cannot be pruned
    feeds_output: bool = False
    block: int = 1  # channels go in aligned blocks of this many (a grouped conv's groups)

    @property
    def name(self) -> str:
        """How reports, errors and ``pruning.overrides`` name it: its producers, "+"."""
        return "+".join(self.producers)


@dataclass
class ChannelGraph:
    groups: list[Group]
    tensor_shapes: dict[str, list[int]]
    # Conv/Linear layers no group holds, each with the op and source line that stopped it
    refusals: list[str] = field(default_factory=list)
    grouped: bool = False  # a grouped/depthwise conv follows its channels: see rewrite.py
    free_sizes: list[str] = field(default_factory=list)  # FX views made -1: see fx_graph.py
    # channel shuffles whose channel counts are constants: where (shuffle.source_key) -> the
    # groups shuffled there (TorchScript: see graph.py and rewrite.generic_shuffles)
    constant_shuffles: dict[str, set[int]] = field(default_factory=dict)


class AnalysisBase(Generic[N, V]):
    """Union-find over groups (and over their channels), per-value states, and the blockers
    and slices they collect."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.parent: list[int] = []
        self.groups: list[Group] = []
        self.states: dict[V, State] = {}
        self.ranks: dict[V, int] = {}
        self.refusals: dict[str, str] = {}  # layer -> why it holds no group
        self.uses: dict[str, N] = {}  # tensor -> the first node that reads it
        self.grouped = False
        # channel-level union-find: channel c of group g is id base[g] + c; two channels in
        # one set are removed together (a shuffle couples channels, not whole groups)
        self.base: list[int] = []
        self.cparent: list[int] = []
        # channel shuffles whose channel counts are constants (where -> groups shuffled)
        self.constant_shuffles: dict[str, set[int]] = {}

    # -- the front end's hooks: what a node or a value says ---------------------------------
    def kind(self, node: N) -> str:
        """The op's name, "aten::conv2d"."""
        raise NotImplementedError

    def output(self, node: N) -> V:
        raise NotImplementedError

    def constant(self, value: V) -> object:
        """The value of a constant argument; None when it is not a constant (or is None)."""
        raise NotImplementedError

    def items(self, value: V) -> list[V] | None:
        """A list argument's items (only their count and constants are read), else None."""
        raise NotImplementedError

    def batch_size(self, value: V) -> bool:
        """Whether ``value`` is ``x.size(0)`` of some tensor x."""
        raise NotImplementedError

    def location(self, node: N) -> str:
        """'model.py:15: return self.fc(x.view(-1, 400))', or 'unknown location'."""
        raise NotImplementedError

    def value_rank(self, value: V) -> int | None:
        """A tensor value's rank from its type, None when unknown."""
        raise NotImplementedError

    def param(self, value: V) -> str | None:
        """State-dict name of a parameter/buffer argument, None for an absent (None) one;
        raises Opaque for a weight that is not a parameter of a submodule."""
        raise NotImplementedError

    def is_number(self, value: V) -> bool:
        raise NotImplementedError

    def fixed(self, value: V) -> int | bool | None:
        """A constant int or bool (TorchScript: or a module's attribute no code assigns)."""
        known = self.constant(value)
        return known if isinstance(known, int) else None  # bool is an int too

    def computed(self, value: V) -> bool:
        """A tensor computed in forward, not a parameter or buffer (whose channel dimension
        would have to be sliced)."""
        raise NotImplementedError

    # -- the bookkeeping ---------------------------------------------------------------------
    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def new_group(self, channels: int, producer: str) -> int:
        self.parent.append(len(self.groups))
        self.groups.append(Group(id=len(self.groups), channels=channels, producers=[producer]))
        self.base.append(len(self.cparent))
        self.cparent.extend(range(len(self.cparent), len(self.cparent) + channels))
        return len(self.groups) - 1

    def cfind(self, x: int) -> int:
        while self.cparent[x] != x:
            self.cparent[x] = self.cparent[self.cparent[x]]
            x = self.cparent[x]
        return x

    def channel_id(self, group: int, channel: int) -> int:
        return self.base[group] + channel

    def union(self, a: int, b: int, node: N | None, what: str = "") -> int:
        """Groups ``a`` and ``b`` meet channel by channel (residual add): one group."""
        if self.groups[a].channels != self.groups[b].channels:
            what = what or (self.kind(node) if node is not None else "")
            self.block(a, f"{what} of {self.groups[a].channels} and "
                          f"{self.groups[b].channels} channels", node)
        for c in range(min(self.groups[a].channels, self.groups[b].channels)):
            self.couple_channels((a, c), (b, c))
        return self.merge(a, b)

    def merge(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.groups[ra].block = math.lcm(self.groups[ra].block, self.groups[rb].block)
        return ra

    def couple_channels(self, x: tuple[int, int], y: tuple[int, int]) -> None:
        """Channel x[1] of group x[0] and channel y[1] of group y[0] go together."""
        self.merge(x[0], y[0])
        cx, cy = self.cfind(self.channel_id(*x)), self.cfind(self.channel_id(*y))
        if cx != cy:
            self.cparent[cy] = cx

    def block(self, group: int, why: str, node: N | None) -> None:
        where = f" at {self.location(node)}" if node is not None else ""
        self.groups[self.find(group)].blockers.append(f"{why}{where}")

    def block_state(self, state: State, why: str, node: N | None) -> None:
        for part in state.parts:
            self.block(part, why, node)

    def refuse(self, layer: str, why: str, node: N) -> None:
        """A Conv/Linear the analysis cannot follow: it holds no group, and says why."""
        self.refusals.setdefault(layer, f"layer {layer}: {why} at {self.location(node)}")

    def add_slice(self, group: int, tensor: str | None, dim: int, inner: int = 1,
                  offset: int = 0) -> None:
        """A slice in group ``group``'s own channels (not its root's: see ``result``)."""
        if tensor is not None:
            self.groups[group].slices.append(Slice(tensor, dim, inner, offset))

    def slice_state(self, state: State, tensor: str | None, dim: int, inner: int = 1) -> None:
        """``tensor`` is indexed along ``dim`` by the channels of ``state``, position by
        position: each group's part at its offset, or its pairs after a chunk or shuffle."""
        if tensor is None:
            return
        if state.layout is None:
            for group, offset in self.offsets(state):
                self.add_slice(group, tensor, dim, inner, offset)
            return
        for group in state.parts:
            pairs = tuple((c, p) for p, (g, c) in enumerate(state.layout) if g == group)
            self.groups[group].slices.append(Slice(tensor, dim, inner, pairs=pairs))

    def channels(self, state: State) -> int:
        if state.layout is not None:
            return len(state.layout)
        return sum(self.groups[g].channels for g in state.parts)

    def offsets(self, state: State) -> list[tuple[int, int]]:
        """(group, offset in channels) of each part."""
        out, at = [], 0
        for g in state.parts:
            out.append((g, at))
            at += self.groups[g].channels
        return out

    def layout(self, state: State) -> Layout:
        """Each channel position's (group, channel)."""
        if state.layout is not None:
            return state.layout
        return tuple((g, c) for g in state.parts for c in range(self.groups[g].channels))

    def make_state(self, layout: Layout, rank: int | None, flat: bool = False,
                   nonzero: str | None = None) -> State:
        """The state of a tensor whose positions carry ``layout``; a layout that is whole
        groups in order is stored as just those groups."""
        parts = tuple(dict.fromkeys(g for g, _ in layout))
        runs: list[int] = []
        at = 0
        while at < len(layout):
            group = layout[at][0]
            width = self.groups[group].channels
            if layout[at:at + width] != tuple((group, c) for c in range(width)):
                return State(parts, rank, flat, nonzero, layout)
            runs.append(group)
            at += width
        return State(tuple(runs), rank, flat, nonzero)

    def channel_key(self, state: State) -> tuple[int, ...]:
        """The channel sets at each position: equal keys carry the same channels."""
        return tuple(self.cfind(self.channel_id(g, c)) for g, c in self.layout(state))

    def rank(self, value: V) -> int | None:
        if value in self.ranks:
            return self.ranks[value]
        state = self.states.get(value)
        if state is not None:
            return state.rank
        return self.value_rank(value)

    def couple_shared_tensors(self) -> None:
        """A layer called twice slices one tensor for two groups: the channels at each
        position are one."""
        cuts: dict[tuple[str, int], list[tuple[Group, Slice]]] = {}
        for group in self.groups:
            for piece in group.slices:
                cuts.setdefault((piece.tensor, piece.dim), []).append((group, piece))
        for pieces in cuts.values():
            if len({group.id for group, _ in pieces}) == 1:
                continue  # one group's own slices (the usual case)
            owner: dict[int, tuple[int, int]] = {}
            for group, piece in pieces:
                for channel, at in piece.positions(group.channels):
                    first = owner.setdefault(at, (group.id, channel))
                    if first != (group.id, channel):
                        self.couple_channels(first, (group.id, channel))

    def account(self, layers: dict[str, str]) -> list[str]:
        """Every Conv/Linear (``layers``: module path -> class name) in a group or refused
        with its op and line."""
        producers = {p for g in self.groups for p in g.producers}
        for name in layers:
            if name in producers or name in self.refusals:
                continue
            node = self.uses.get(f"{name}.weight")
            self.refusals[name] = (
                f"layer {name}: its weight is read by {self.kind(node)}, which the channel "
                f"analysis does not follow, at {self.location(node)}" if node is not None
                else f"layer {name}: not called by forward")
        return list(self.refusals.values())

    def result(self, layers: dict[str, str]) -> ChannelGraph:
        """The groups merged by the union-find, with every slice they imply."""
        members: dict[int, list[int]] = {}
        for group in self.groups:
            members.setdefault(self.find(group.id), []).append(group.id)
        merged = [self._merged(root, ids, index)
                  for index, (root, ids) in enumerate(members.items())]
        index = {root: i for i, root in enumerate(members)}
        shuffles = {where: {index[self.find(g)] for g in groups}
                    for where, groups in self.constant_shuffles.items()}
        shapes = {k: list(v.shape) for k, v in self.tensors.items()}
        return ChannelGraph(groups=merged, tensor_shapes=shapes,
                            refusals=self.account(layers), grouped=self.grouped,
                            constant_shuffles=shuffles)

    def _merged(self, root: int, ids: list[int], index: int) -> Group:
        """One group of coupled groups. Its channels are *units*, the channel sets removed
        together, numbered in the root group's channel order: a group coupled only by
        residual adds has one unit per channel, exactly its root's channels. Each member's
        slices are rewritten in units (as ``pairs`` unless its channels are the units in
        order)."""
        order = [root] + [i for i in ids if i != root]
        units: dict[int, int] = {}
        maps = {member: [units.setdefault(self.cfind(self.channel_id(member, c)), len(units))
                         for c in range(self.groups[member].channels)] for member in order}
        plain = list(range(len(units)))
        into = Group(id=index, channels=len(units), block=self.groups[root].block)
        seen: set[Slice] = set()
        for member in order:
            group, unit = self.groups[member], maps[member]
            into.producers += [p for p in group.producers if p not in into.producers]
            into.blockers += group.blockers
            into.feeds_output |= group.feeds_output
            for piece in group.slices:
                if unit != plain or piece.pairs is not None:
                    pairs = tuple(sorted(((unit[c], at) for c, at in piece.positions(len(unit))),
                                         key=lambda pair: pair[1]))
                    piece = Slice(piece.tensor, piece.dim, piece.inner, pairs=pairs)
                if piece not in seen:
                    seen.add(piece)
                    into.slices.append(piece)
        if into.block > 1 and any(s.pairs is not None for s in into.slices):
            into.blockers.append("a grouped conv's blocks of channels meet a channel shuffle "
                                 "or split")
        if _conflicts(into):
            into.blockers.append("a tensor reached both flattened and not")
        return into


def _conflicts(group: Group) -> bool:
    """One tensor position claimed by two units or two layouts (a flatten and not)."""
    cuts: dict[tuple[str, int], list[Slice]] = {}
    for piece in group.slices:
        cuts.setdefault((piece.tensor, piece.dim), []).append(piece)
    for pieces in cuts.values():
        if len(pieces) == 1:
            continue
        claims: dict[int, tuple[int, int]] = {}
        for piece in pieces:
            for unit, at in piece.positions(group.channels):
                if claims.setdefault(at, (unit, piece.inner)) != (unit, piece.inner):
                    return True
    return False
