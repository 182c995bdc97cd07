"""Channel dependency analysis on a TorchScript graph (scripted or traced, the same way).

Every Conv/Linear output opens a *channel group*; the analysis follows each group's channels
forward through the inlined graph and records every tensor slice that must shrink with them
(BatchNorm parameters and running stats, the next layer's input channels, a Linear's input
features after a flatten). A residual ``add`` (or elementwise ``mul``) of two groups merges
them into one group (union-find), as DepGraph does.

A group that reaches something the analysis cannot follow (a concat, a fixed-size reshape, a
custom op, an activation that does not map 0 to 0) records a *blocker* naming the op and the
source location; pruning such a group is refused, while a group nobody asked to prune (e.g.
the logits) may keep its blockers harmlessly.

Removal is exact when the producers' output channels are zero in the masked model: every op
we let a group pass through maps a zero channel to a zero channel, so the consumer's slices
multiply zeros only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from worker.engine.shrink.ops import (
    CONV,
    COUPLING,
    METADATA,
    PASSTHROUGH,
    SCALE,
    Opaque,
    State,
    flatten_state,
    is_number,
    location,
    mean_state,
    plain_conv,
    reshape_rank,
)


@dataclass(frozen=True)
class Slice:
    """Tensor ``tensor`` is indexed along ``dim`` by a group's channels; with ``inner`` > 1
    each channel owns ``inner`` consecutive entries (a Linear after flatten: C*H*W)."""

    tensor: str
    dim: int
    inner: int = 1


@dataclass
class Group:
    """Channels that must be removed together."""

    id: int
    channels: int
    producers: list[str] = field(default_factory=list)  # module paths: "layer1.conv1"
    slices: list[Slice] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)  # why it cannot be pruned
    feeds_output: bool = False


@dataclass
class ChannelGraph:
    groups: list[Group]
    tensor_shapes: dict[str, list[int]]


class _Analysis:
    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.tensors = dict(module.state_dict())
        self.parent: list[int] = []
        self.groups: list[Group] = []
        self.states: dict[torch._C.Value, State] = {}
        self.paths: dict[torch._C.Value, str] = {}
        self.ranks: dict[torch._C.Value, int] = {}
        self.containers: dict[torch._C.Value, list[State]] = {}

    # -- union-find over groups ------------------------------------------------------------
    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def new_group(self, channels: int, producer: str) -> int:
        self.parent.append(len(self.groups))
        self.groups.append(Group(id=len(self.groups), channels=channels, producers=[producer]))
        return len(self.groups) - 1

    def union(self, a: int, b: int, node: torch._C.Node | None, what: str = "") -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.groups[ra].channels != self.groups[rb].channels:
                what = what or (node.kind() if node is not None else "")
                self.block(ra, f"{what} of {self.groups[ra].channels} and "
                               f"{self.groups[rb].channels} channels", node)
            self.parent[rb] = ra
        return ra

    def block(self, group: int, why: str, node: torch._C.Node | None) -> None:
        where = f" at {location(node)}" if node is not None else ""
        self.groups[self.find(group)].blockers.append(f"{why}{where}")

    def add_slice(self, group: int, tensor: str | None, dim: int, inner: int = 1) -> None:
        if tensor is not None:
            self.groups[self.find(group)].slices.append(Slice(tensor, dim, inner))

    # -- value helpers ---------------------------------------------------------------------
    def rank(self, value: torch._C.Value) -> int | None:
        if value in self.ranks:
            return self.ranks[value]
        state = self.states.get(value)
        if state is not None:
            return state.rank
        typ = value.type()
        return typ.dim() if isinstance(typ, torch.TensorType) else None

    def param(self, value: torch._C.Value) -> str | None:
        """State-dict name of a parameter/buffer input, None for a None constant."""
        if value.node().kind() == "prim::Constant" and value.type().kind() == "NoneType":
            return None
        if value not in self.paths or self.paths[value] not in self.tensors:
            raise Opaque("a weight that is not a parameter of a submodule")
        return self.paths[value]

    # -- the walk ----------------------------------------------------------------------------
    def run(self, graph: torch._C.Graph) -> None:
        inputs = list(graph.inputs())
        self.paths[inputs[0]] = ""  # self
        self.walk(graph.nodes())
        for value in graph.outputs():
            self.mark_output(value)
        self.couple_shared_tensors()

    def couple_shared_tensors(self) -> None:
        """A layer called twice slices one tensor for two groups: they are one group."""
        owner: dict[tuple[str, int], int] = {}
        for group in self.groups:
            for piece in group.slices:
                first = owner.setdefault((piece.tensor, piece.dim), group.id)
                self.union(first, group.id, None, f"{piece.tensor} shared by layers")

    def mark_output(self, value: torch._C.Value) -> None:
        state = self.states.get(value)
        if state is not None:
            self.groups[self.find(state.group)].feeds_output = True
        for packed in self.containers.get(value, []):
            self.groups[self.find(packed.group)].feeds_output = True

    def walk(self, nodes: Iterable[torch._C.Node]) -> None:
        for node in nodes:
            self.visit(node)

    def visit(self, node: torch._C.Node) -> None:
        kind = node.kind()
        ins = list(node.inputs())
        if kind == "prim::GetAttr":
            owner = self.paths.get(ins[0])
            if owner is not None:
                name = node.s("name")
                self.paths[node.output()] = f"{owner}.{name}" if owner else name
            return
        packed = [s for v in ins for s in self.containers.get(v, [])]
        if kind in ("prim::ListConstruct", "prim::TupleConstruct") and any(
                v in self.states for v in ins):
            self.containers[node.output()] = [self.states[v] for v in ins if v in self.states]
            return
        if packed:  # a list of channel tensors reaches an op (torch.cat, a tuple unpack...)
            for state in packed:
                self.block(state.group, f"{kind} (a list of channel tensors)", node)
            return
        tracked = [v for v in ins if v in self.states]
        try:
            if kind in CONV or kind == "aten::linear":
                self.layer(node, ins)
            elif kind == "aten::batch_norm":
                self.batch_norm(node, ins)
            elif kind == "prim::If":
                self.branch(node)
            elif not tracked:
                self.untracked(node, kind, ins)
            else:
                self.follow(node, kind, ins, tracked)
        except Opaque as exc:
            for value in tracked:
                self.block(self.states[value].group, f"{kind} ({exc})", node)

    def untracked(self, node: torch._C.Node, kind: str, ins: list[torch._C.Value]) -> None:
        """A node no group flows into: only ranks matter (for a later Linear/flatten)."""
        for block in node.blocks():
            self.walk(block.nodes())
        if kind in ("aten::flatten", "aten::view", "aten::reshape") and node.outputsSize() == 1:
            rank = reshape_rank(node, ins, self.rank(ins[0]))
            if rank is not None:
                self.ranks[node.output()] = rank

    def follow(self, node: torch._C.Node, kind: str, ins: list[torch._C.Value],
               tracked: list[torch._C.Value]) -> None:
        state = self.states[tracked[0]]
        if kind in METADATA:
            return
        if kind in PASSTHROUGH:
            if ins[0] is not tracked[0]:
                raise Opaque("a channel tensor in an unexpected argument")
            self.states[next(node.outputs())] = state
        elif kind in COUPLING and len(tracked) == 2:
            other = self.states[tracked[1]]
            if state.flat != other.flat:
                raise Opaque("adds a flattened and an unflattened tensor")
            group = self.union(state.group, other.group, node)
            rank = state.rank if state.rank is not None else other.rank
            self.states[node.output()] = State(group, rank, state.flat)
        elif kind in SCALE and len(tracked) == 1 and ins[0] is tracked[0] and is_number(ins[1]):
            self.states[node.output()] = state  # x * 0.5 keeps zeros zero
        elif kind in ("aten::flatten", "aten::view", "aten::reshape") and ins[0] is tracked[0]:
            self.states[node.output()] = flatten_state(node, ins, state)
        elif kind == "aten::mean" and ins[0] is tracked[0]:
            self.states[node.output()] = mean_state(node, ins, state)
        else:
            raise Opaque("an op the channel analysis does not know")

    def layer(self, node: torch._C.Node, ins: list[torch._C.Value]) -> None:
        """Conv/Linear: consumes its input's group (weight dim 1), produces a new group."""
        weight, bias = self.param(ins[1]), self.param(ins[2])
        if weight is None:
            raise Opaque("a layer without a weight")
        shape = list(self.tensors[weight].shape)
        conv = node.kind() in CONV
        source = self.states.get(ins[0])
        if conv and not plain_conv(node, ins):
            if source is not None:
                layer = weight.rsplit(".", 1)[0]
                self.block(source.group, f"{node.kind()} with groups != 1 or transposed "
                           f"(layer {layer})", node)
            return
        if source is not None:
            self.consume(node, source, shape, weight, conv)
        module = weight.rsplit(".", 1)[0] if "." in weight else ""
        group = self.new_group(shape[0], module)
        self.add_slice(group, weight, 0)
        self.add_slice(group, bias, 0)
        rank = len(shape) if conv else self.rank(ins[0])
        self.states[node.output()] = State(group, rank)

    def consume(self, node: torch._C.Node, source: State, shape: list[int], weight: str,
                conv: bool) -> None:
        channels = self.groups[self.find(source.group)].channels
        if conv or not source.flat:
            if not conv and source.rank != 2:
                self.block(source.group, "a Linear applied to a tensor whose last dimension "
                           "is not the channel dimension", node)
                return
            if shape[1] != channels:
                self.block(source.group, f"{weight} expects {shape[1]} inputs", node)
                return
            self.add_slice(source.group, weight, 1)
            return
        if shape[1] % channels:
            self.block(source.group, f"{weight}'s {shape[1]} inputs are not a multiple of "
                       f"{channels} channels", node)
            return
        self.add_slice(source.group, weight, 1, shape[1] // channels)

    def batch_norm(self, node: torch._C.Node, ins: list[torch._C.Value]) -> None:
        source = self.states.get(ins[0])
        if source is None:
            return
        names = [self.param(value) for value in ins[1:5]]  # weight, bias, mean, var
        if names[0] is None or names[1] is None:  # 0 would come out as -mean/std, not 0
            raise Opaque("BatchNorm without affine weight and bias")
        for name in names:
            self.add_slice(source.group, name, 0)
        self.states[node.output()] = source

    def branch(self, node: torch._C.Node) -> None:
        """prim::If: walk both branches; an output carries a group only if both agree."""
        for block in node.blocks():
            self.walk(block.nodes())
        for i, out in enumerate(node.outputs()):
            states = [self.states.get(list(block.outputs())[i]) for block in node.blocks()]
            known = [s for s in states if s is not None]
            if not known:
                continue
            groups = {self.find(s.group) for s in known}
            if len(known) == len(states) and len(groups) == 1:
                self.states[out] = known[0]
            else:
                for s in known:
                    self.block(s.group, "a branch whose outputs carry different channels", node)


def analyse(module: torch.jit.ScriptModule) -> ChannelGraph:
    """The channel groups of ``module``'s forward, coupled, with every slice they imply."""
    graph = module.inlined_graph  # a copy: the passes below never touch the module
    torch._C._jit_pass_constant_propagation(graph)  # folds F.relu's `if inplace:` and kin
    analysis = _Analysis(module)
    analysis.run(graph)
    merged: dict[int, Group] = {}
    for group in analysis.groups:
        root = merged.setdefault(analysis.find(group.id), Group(
            id=len(merged), channels=analysis.groups[analysis.find(group.id)].channels))
        root.producers += [p for p in group.producers if p not in root.producers]
        root.slices += [s for s in group.slices if s not in root.slices]
        root.blockers += group.blockers
        root.feeds_output |= group.feeds_output
    for group in merged.values():
        cuts = [(s.tensor, s.dim) for s in group.slices]
        if len(set(cuts)) != len(cuts):  # one tensor, two layouts (a flatten and not)
            group.blockers.append("a tensor reached both flattened and not")
    shapes = {k: list(v.shape) for k, v in analysis.tensors.items()}
    return ChannelGraph(groups=list(merged.values()), tensor_shapes=shapes)
