"""What the channel analysis records: groups, the tensor slices they imply, the state of each
graph value, and the union-find with its bookkeeping that every rule module shares.

The analysis has two front ends, one set of rules: ``graph.py`` walks a TorchScript graph,
``fx_graph.py`` an exported program's FX graph. Both see the same ATen ops with the same
argument positions; each implements the few hooks below that read a node or a value (its op
name, a constant argument, a rank, a parameter's name, a source location), and the rules
(``rules.py``, ``layers.py``) read nodes through these hooks only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from worker.engine.shrink.ops import State

N = TypeVar("N")  # a graph node: torch._C.Node or torch.fx.Node
V = TypeVar("V", bound=Hashable)  # a value: torch._C.Value, or an FX node or constant


@dataclass(frozen=True)
class Slice:
    """Tensor ``tensor`` is indexed along ``dim`` by a group's channels: channel ``c`` owns
    entries ``(offset + c) * inner ... + inner - 1`` (``inner`` > 1: a Linear after flatten,
    C*H*W; ``offset`` > 0: the group's place in a concatenation)."""

    tensor: str
    dim: int
    inner: int = 1
    offset: int = 0


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


class AnalysisBase(Generic[N, V]):
    """Union-find over groups, per-value states, and the blockers and slices they collect."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.parent: list[int] = []
        self.groups: list[Group] = []
        self.states: dict[V, State] = {}
        self.ranks: dict[V, int] = {}
        self.refusals: dict[str, str] = {}  # layer -> why it holds no group
        self.uses: dict[str, N] = {}  # tensor -> the first node that reads it
        self.grouped = False

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
        return len(self.groups) - 1

    def union(self, a: int, b: int, node: N | None, what: str = "") -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.groups[ra].channels != self.groups[rb].channels:
                what = what or (self.kind(node) if node is not None else "")
                self.block(ra, f"{what} of {self.groups[ra].channels} and "
                               f"{self.groups[rb].channels} channels", node)
            self.parent[rb] = ra
            self.groups[ra].block = math.lcm(self.groups[ra].block, self.groups[rb].block)
        return ra

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
        if tensor is not None:
            self.groups[self.find(group)].slices.append(Slice(tensor, dim, inner, offset))

    def channels(self, state: State) -> int:
        return sum(self.groups[self.find(g)].channels for g in state.parts)

    def offsets(self, state: State) -> list[tuple[int, int]]:
        """(group, offset in channels) of each part."""
        out, at = [], 0
        for g in state.parts:
            out.append((g, at))
            at += self.groups[self.find(g)].channels
        return out

    def rank(self, value: V) -> int | None:
        if value in self.ranks:
            return self.ranks[value]
        state = self.states.get(value)
        if state is not None:
            return state.rank
        return self.value_rank(value)

    def couple_shared_tensors(self) -> None:
        """A layer called twice slices one tensor for two groups: they are one group."""
        owner: dict[tuple[str, int, int], int] = {}
        for group in self.groups:
            for piece in group.slices:
                first = owner.setdefault((piece.tensor, piece.dim, piece.offset), group.id)
                self.union(first, group.id, None, f"{piece.tensor} shared by layers")

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
        merged: dict[int, Group] = {}
        for group in self.groups:
            root = self.groups[self.find(group.id)]
            into = merged.setdefault(root.id, Group(id=len(merged), channels=root.channels,
                                                    block=root.block))
            into.producers += [p for p in group.producers if p not in into.producers]
            into.slices += [s for s in group.slices if s not in into.slices]
            into.blockers += group.blockers
            into.feeds_output |= group.feeds_output
        for group in merged.values():
            cuts = [(s.tensor, s.dim, s.offset) for s in group.slices]
            if len(set(cuts)) != len(cuts):  # one tensor, two layouts (a flatten and not)
                group.blockers.append("a tensor reached both flattened and not")
        shapes = {k: list(v.shape) for k, v in self.tensors.items()}
        return ChannelGraph(groups=list(merged.values()), tensor_shapes=shapes,
                            refusals=self.account(layers), grouped=self.grouped)
