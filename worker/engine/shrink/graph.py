"""Channel dependency analysis on a TorchScript graph (scripted or traced, the same way).

Every Conv/Linear output opens a *channel group*; the analysis follows each group's channels
forward through the inlined graph and records every tensor slice that must shrink with them
(BatchNorm parameters and running stats, the next layer's input channels, a Linear's input
features after a flatten). A residual ``add`` (or elementwise ``mul``) of two groups merges
them into one group (union-find), as DepGraph does.

A concatenation along channels carries its parts in order (a consumer's input channels map to
each part at its offset); a depthwise or grouped conv passes its input's group through
(``layers.py``); a multiply of two groups (a squeeze-and-excitation gate) couples them.

A group that reaches something the analysis cannot follow (a fixed-size reshape, a split, a
custom op, a layer reading channels that an activation made non-zero) records a *blocker*
naming the op and the source location; pruning such a group is refused, while a group nobody
asked to prune (e.g. the logits) may keep its blockers harmlessly. A Conv/Linear that opens
no group is a *refusal* of the graph, with its op and line: no layer vanishes unexplained.

Removal is exact when the producers' output channels are zero in the masked model: every op
we let a group pass through maps a zero channel to a zero channel, so the consumer's slices
multiply zeros only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch

import worker.engine.shrink.layers as layers
from worker.engine.shrink.ops import (
    CONCAT,
    CONV,
    COUPLING,
    METADATA,
    NONZERO,
    PASSTHROUGH,
    SCALE,
    TRANSPOSED,
    Opaque,
    State,
    constant,
    flatten_state,
    is_number,
    location,
    mean_state,
    reshape_rank,
)
from worker.engine.shrink.state import AnalysisBase, ChannelGraph, Group, Slice

__all__ = ["ChannelGraph", "Group", "Slice", "analyse"]

LAYERS = CONV | TRANSPOSED | {"aten::linear"}
# Module types whose weights the accounting expects in a group or a refusal.
LAYER_TYPES = frozenset({"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                         "ConvTranspose3d", "Linear"})
_TRAINING = "training"


class _Analysis(AnalysisBase):
    def run(self, graph: torch._C.Graph) -> None:
        inputs = list(graph.inputs())
        self.paths[inputs[0]] = ""  # self
        self.assigned = {n.s("name") for n in graph.findAllNodes(  # type: ignore[attr-defined]
            "prim::SetAttr", True)}
        self.walk(graph.nodes())
        for value in graph.outputs():
            self.mark_output(value)
        self.couple_shared_tensors()

    def couple_shared_tensors(self) -> None:
        """A layer called twice slices one tensor for two groups: they are one group."""
        owner: dict[tuple[str, int, int], int] = {}
        for group in self.groups:
            for piece in group.slices:
                first = owner.setdefault((piece.tensor, piece.dim, piece.offset), group.id)
                self.union(first, group.id, None, f"{piece.tensor} shared by layers")

    def mark_output(self, value: torch._C.Value) -> None:
        states = [self.states[value]] if value in self.states else []
        states += [self.states[v] for v in self.containers.get(value, []) if v in self.states]
        for state in states:
            for part in state.parts:
                self.groups[self.find(part)].feeds_output = True

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
        for value in ins:
            if value in self.paths and self.paths[value] in self.tensors:
                self.uses.setdefault(self.paths[value], node)
        if self.container_op(node, kind, ins):
            return
        tracked = [v for v in ins if v in self.states]
        try:
            if kind in LAYERS:
                layers.layer(self, node, ins)
            elif kind == "aten::batch_norm":
                layers.batch_norm(self, node, ins)
            elif kind == "prim::If":
                self.branch(node)
            elif not tracked:
                self.untracked(node, kind, ins)
            else:
                self.follow(node, kind, ins, tracked)
        except Opaque as exc:
            for value in tracked:
                self.block_state(self.states[value], f"{kind} ({exc})", node)

    def container_op(self, node: torch._C.Node, kind: str, ins: list[torch._C.Value]) -> bool:
        """Lists and tuples of channel tensors: built, appended to (DenseNet's feature list),
        concatenated along channels. Anything else done to such a list blocks its groups."""
        if kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            if any(v in self.states for v in ins):
                self.containers[node.output()] = list(ins)
                return True
            return False
        if kind == "aten::append" and ins[0] in self.containers:
            self.containers[ins[0]].append(ins[1])
            return True
        if kind in ("prim::TupleUnpack", "prim::ListUnpack") and ins[0] in self.containers:
            self.unpack(self.containers[ins[0]], list(node.outputs()))
            return True
        if kind in ("prim::TupleIndex", "aten::__getitem__") and ins[0] in self.containers:
            index, items = constant(ins[1]), self.containers[ins[0]]
            if isinstance(index, int) and -len(items) <= index < len(items):
                self.unpack([items[index]], [node.output()])
                return True
        packed = [self.states[v] for v in ins for v in self.containers.get(v, [])
                  if v in self.states]
        if not packed:
            return False
        if kind in CONCAT and self.concat(node, ins):
            return True
        for state in packed:
            self.block_state(state, f"{kind} (a list of channel tensors)", node)
        return True

    def unpack(self, items: list[torch._C.Value], outs: list[torch._C.Value]) -> None:
        """Values taken out of a list or tuple are the values put in."""
        for item, out in zip(items, outs, strict=False):
            if item in self.states:
                self.states[out] = self.states[item]
            if item in self.containers:
                self.containers[out] = self.containers[item]

    def concat(self, node: torch._C.Node, ins: list[torch._C.Value]) -> bool:
        items = self.containers[ins[0]]
        states = [self.states.get(v) for v in items]
        ranks = {s.rank for s in states if s is not None}
        if any(s is None or s.flat for s in states) or len(ranks) != 1:
            return False  # a tensor of unknown channels among them: offsets unknown
        rank = ranks.pop()
        dim = constant(ins[1])
        if rank is None or not isinstance(dim, int) or dim % rank != 1:
            return False
        parts = tuple(p for s in states if s is not None for p in s.parts)
        nonzero = next((s.nonzero for s in states if s is not None and s.nonzero), None)
        self.states[node.output()] = State(parts, rank, nonzero=nonzero)
        return True

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
        first = ins[0] is tracked[0]
        if kind in PASSTHROUGH or kind in NONZERO:
            if not first:
                raise Opaque("a channel tensor in an unexpected argument")
            if kind in NONZERO and state.nonzero is None:
                state = replace(state, nonzero=f"{kind} at {location(node)}")
            self.states[node.output()] = state
        elif kind in COUPLING and len(tracked) == 2:
            self.states[node.output()] = self.couple(node, state, self.states[tracked[1]])
        elif kind in SCALE and len(tracked) == 1 and first and is_number(ins[1]):
            self.states[node.output()] = state  # x * 0.5 keeps zeros zero
        elif kind in ("aten::mul", "aten::mul_") and len(tracked) == 1 and self.computed(
                ins[1] if first else ins[0]):
            # times a computed tensor (stochastic depth's per-sample noise): zeros stay zero
            self.states[node.output()] = state
        elif kind in ("aten::flatten", "aten::view", "aten::reshape") and first:
            self.states[node.output()] = flatten_state(node, ins, state)
        elif kind == "aten::mean" and first:
            self.states[node.output()] = mean_state(node, ins, state)
        else:
            raise Opaque("an op the channel analysis does not know")

    def computed(self, value: torch._C.Value) -> bool:
        """A tensor computed in forward, not a parameter or buffer (whose channel dimension
        would have to be sliced)."""
        return isinstance(value.type(), torch.TensorType) and value not in self.paths

    def couple(self, node: torch._C.Node, a: State, b: State) -> State:
        """Two channel tensors meet elementwise (residual add, gate multiply): one group per
        position. A product's removed channel is 0 when either factor's is."""
        if a.flat != b.flat:
            raise Opaque("adds a flattened and an unflattened tensor")
        sizes = [[self.groups[self.find(g)].channels for g in s.parts] for s in (a, b)]
        if sizes[0] != sizes[1]:
            raise Opaque(f"channel parts {sizes[0]} and {sizes[1]} do not line up")
        parts = tuple(self.union(x, y, node) for x, y in zip(a.parts, b.parts, strict=True))
        if node.kind().startswith("aten::mul"):
            nonzero = a.nonzero if a.nonzero and b.nonzero else None
        else:
            nonzero = a.nonzero or b.nonzero
        rank = a.rank if a.rank is not None else b.rank
        return State(parts, rank, a.flat, nonzero)

    def settled(self, cond: torch._C.Value) -> bool | None:
        """A condition that is a module's bool attribute no code assigns (MobileNetV2's
        ``use_res_connect``): its value, so only the branch taken is followed. ``training``
        is left open: fine-tuning takes the other branch."""
        node = cond.node()
        if node.kind() == "prim::Constant":
            fixed = constant(cond)
            return fixed if isinstance(fixed, bool) else None
        if node.kind() == "prim::If":  # `a and b` is an If on a yielding b or False
            taken = self.settled(node.input())
            if taken is None:
                return None
            block = list(node.blocks())[0 if taken else 1]
            return self.settled(list(block.outputs())[list(node.outputs()).index(cond)])
        if node.kind() != "prim::GetAttr" or cond not in self.paths:
            return None
        name = node.s("name")
        if name == _TRAINING or name in self.assigned:
            return None
        value = self._attribute(self.paths[cond])
        return value if isinstance(value, bool) else None

    def branch(self, node: torch._C.Node) -> None:
        """prim::If: walk both branches (only the one taken when ``settled``); an output
        carries a group only if the branches walked agree."""
        taken = self.settled(node.input())
        blocks = list(node.blocks())
        if taken is not None:
            blocks = [blocks[0] if taken else blocks[1]]
        for block in blocks:
            self.walk(block.nodes())
        for i, out in enumerate(node.outputs()):
            states = [self.states.get(list(block.outputs())[i]) for block in blocks]
            known = [s for s in states if s is not None]
            if not known:
                continue
            roots = {tuple(self.find(g) for g in s.parts) for s in known}
            if len(known) == len(states) and len(roots) == 1:
                self.states[out] = known[0]
            else:
                for s in known:
                    self.block_state(s, "a branch whose outputs carry different channels",
                                     node)

    def account(self) -> list[str]:
        """Every Conv/Linear in a group or refused with its op and line."""
        producers = {p for g in self.groups for p in g.producers}
        for name, sub in self.module.named_modules():
            kind = str(getattr(sub, "original_name", type(sub).__name__))
            if kind not in LAYER_TYPES or name in producers or name in self.refusals:
                continue
            node = self.uses.get(f"{name}.weight")
            self.refusals[name] = (
                f"layer {name}: its weight is read by {node.kind()}, which the channel "
                f"analysis does not follow, at {location(node)}" if node is not None
                else f"layer {name}: not called by forward")
        return list(self.refusals.values())


def analyse(module: torch.jit.ScriptModule) -> ChannelGraph:
    """The channel groups of ``module``'s forward, coupled, with every slice they imply."""
    graph = module.inlined_graph  # a copy: the passes below never touch the module
    torch._C._jit_pass_constant_propagation(graph)  # folds F.relu's `if inplace:` and kin
    analysis = _Analysis(module)
    analysis.run(graph)
    merged: dict[int, Group] = {}
    for group in analysis.groups:
        root = analysis.groups[analysis.find(group.id)]
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
    shapes = {k: list(v.shape) for k, v in analysis.tensors.items()}
    return ChannelGraph(groups=list(merged.values()), tensor_shapes=shapes,
                        refusals=analysis.account(), grouped=analysis.grouped)
