"""Channel dependency analysis on a TorchScript graph (scripted or traced, the same way): the
TorchScript front end of the rules in ``rules.py`` and ``layers.py`` (``fx_graph.py`` is the
exported program's).

Every Conv/Linear output opens a *channel group*; the analysis follows each group's channels
forward through the inlined graph and records every tensor slice that must shrink with them
(BatchNorm parameters and running stats, the next layer's input channels, a Linear's input
features after a flatten). A residual ``add`` (or elementwise ``mul``) of two groups merges
them into one group (union-find), as DepGraph does.

A concatenation along channels carries its parts in order (a consumer's input channels map to
each part at its offset); a depthwise or grouped conv passes its input's group through
(``layers.py``); a multiply of two groups (a squeeze-and-excitation gate) couples them.
``x.chunk(n, 1)`` and the channel shuffle move channels to new positions (``shuffle.py``,
through the walk's ``moved`` hook): their tensors' channels are tracked position by position.

A group that reaches something the analysis cannot follow (a fixed-size reshape, an uneven
chunk, a custom op, a layer reading channels that an activation made non-zero) records a
*blocker* naming the op and the source location; pruning such a group is refused, while a
group nobody asked to prune (e.g. the logits) may keep its blockers harmlessly. A Conv/Linear
that opens no group is a *refusal* of the graph, with its op and line: no layer vanishes
unexplained.

Removal is exact when the producers' output channels are zero in the masked model: every op
we let a group pass through maps a zero channel to a zero channel, so the consumer's slices
multiply zeros only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

import worker.engine.shrink.shuffle as shuffle
from worker.engine.shrink.ops import CONCAT, LAYER_TYPES, Opaque, State
from worker.engine.shrink.rules import OpWalk
from worker.engine.shrink.script_nodes import constant, location
from worker.engine.shrink.state import ChannelGraph, Group, Slice

__all__ = ["ChannelGraph", "Group", "Slice", "analyse", "constant", "location"]

_TRAINING = "training"
_NUMBER_TYPES = ("IntType", "FloatType", "NumberType")


class ScriptAnalysis(OpWalk[torch._C.Node, torch._C.Value]):
    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__(dict(module.state_dict()))
        self.module = module
        self.paths: dict[torch._C.Value, str] = {}
        self.containers: dict[torch._C.Value, list[torch._C.Value]] = {}
        self.assigned: set[str] = set()  # attributes forward assigns (prim::SetAttr)
        self.chunks: dict[torch._C.Value, list[State]] = {}  # x.chunk(n, 1): its pieces

    # -- the hooks ---------------------------------------------------------------------------
    def kind(self, node: torch._C.Node) -> str:
        return node.kind()

    def output(self, node: torch._C.Node) -> torch._C.Value:
        return node.output()

    def constant(self, value: torch._C.Value) -> object:
        return constant(value)

    def items(self, value: torch._C.Value) -> list[torch._C.Value] | None:
        node = value.node()
        if node.kind() == "prim::ListConstruct":
            return list(node.inputs())
        if node.kind() == "prim::Constant":
            items = value.toIValue()
            if isinstance(items, list):
                return [value] * len(items)  # only the length is used
        return None

    def batch_size(self, value: torch._C.Value) -> bool:
        while value.node().kind() in ("aten::Int", "prim::NumToTensor", "aten::ScalarImplicit"):
            value = next(value.node().inputs())  # traced graphs wrap x.size(0) in tensors
        node = value.node()
        return node.kind() == "aten::size" and constant(list(node.inputs())[1]) == 0

    def location(self, node: torch._C.Node) -> str:
        return location(node)

    def value_rank(self, value: torch._C.Value) -> int | None:
        typ = value.type()
        return typ.dim() if isinstance(typ, torch.TensorType) else None

    def param(self, value: torch._C.Value) -> str | None:
        if value.type().kind() == "NoneType":
            return None
        path = self.paths.get(value)
        if path is not None and path in self.tensors:
            return path
        if path is not None and self._attribute(path) is None:
            return None  # an optional attribute such as a scripted conv's bias=False
        raise Opaque("a weight that is not a parameter of a submodule")

    def is_number(self, value: torch._C.Value) -> bool:
        return value.type().kind() in _NUMBER_TYPES

    def computed(self, value: torch._C.Value) -> bool:
        return isinstance(value.type(), torch.TensorType) and value not in self.paths

    def moved(self, node: torch._C.Node, kind: str, ins: list[torch._C.Value], state: State,
              first: bool) -> bool:
        """Chunk and channel shuffle (``shuffle.py``)."""
        if kind in shuffle.CHUNK and first:
            self.chunks[node.output()] = shuffle.chunk(self, ins, state)
            return True
        after = shuffle.follow(self, node, ins, state, first)
        if after is not None:
            self.states[node.output()] = after
        return after is not None

    def fixed(self, value: torch._C.Value) -> int | bool | None:
        """A constant, or a module's int or bool attribute that no code assigns."""
        node = value.node()
        if node.kind() == "prim::Constant":
            known = constant(value)
        elif node.kind() == "prim::GetAttr" and value in self.paths:
            name = node.s("name")
            if name == _TRAINING or name in self.assigned:
                return None
            known = self._attribute(self.paths[value])
        else:
            return None
        return known if isinstance(known, int) else None  # bool is an int too

    def _attribute(self, path: str) -> object:
        owner: object = self.module
        for part in path.split("."):
            owner = getattr(owner, part, Opaque)
        return owner

    # -- the walk ------------------------------------------------------------------------------
    def run(self, graph: torch._C.Graph) -> None:
        inputs = list(graph.inputs())
        self.paths[inputs[0]] = ""  # self
        self.assigned = {n.s("name") for n in graph.findAllNodes(  # type: ignore[attr-defined]
            "prim::SetAttr", True)}
        self.walk(graph.nodes())
        for value in graph.outputs():
            self.mark_output(value)
        self.couple_shared_tensors()

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
        if kind == "prim::If":
            self.branch(node)
        else:
            self.op(node, kind, ins)

    def untracked(self, node: torch._C.Node, kind: str, ins: list[torch._C.Value]) -> None:
        for block in node.blocks():
            self.walk(block.nodes())
        if node.outputsSize() == 1:
            super().untracked(node, kind, ins)

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
        if ins and ins[0] in self.chunks and self.take_chunks(node, kind, ins):
            return True
        if kind in ("prim::TupleIndex", "aten::__getitem__") and ins[0] in self.containers:
            index, items = constant(ins[1]), self.containers[ins[0]]
            if isinstance(index, int) and -len(items) <= index < len(items):
                self.unpack([items[index]], [node.output()])
                return True
        packed = [self.states[v] for v in ins for v in self.containers.get(v, [])
                  if v in self.states]
        packed += [s for v in ins for s in self.chunks.get(v, [])]
        if not packed:
            return False
        if kind in CONCAT and self.concat(node, self.containers[ins[0]], ins[1]):
            return True
        for state in packed:
            self.block_state(state, f"{kind} (a list of channel tensors)", node)
        return True

    def take_chunks(self, node: torch._C.Node, kind: str, ins: list[torch._C.Value]) -> bool:
        """The pieces of ``x.chunk(n, 1)``, unpacked or indexed."""
        pieces = self.chunks[ins[0]]
        if kind == "prim::ListUnpack" and node.outputsSize() == len(pieces):
            for out, piece in zip(node.outputs(), pieces, strict=True):
                self.states[out] = piece
            return True
        index = constant(ins[1]) if kind == "aten::__getitem__" else None
        if isinstance(index, int) and -len(pieces) <= index < len(pieces):
            self.states[node.output()] = pieces[index]
            return True
        return False

    def unpack(self, items: list[torch._C.Value], outs: list[torch._C.Value]) -> None:
        """Values taken out of a list or tuple are the values put in."""
        for item, out in zip(items, outs, strict=False):
            if item in self.states:
                self.states[out] = self.states[item]
            if item in self.containers:
                self.containers[out] = self.containers[item]

    def settled(self, cond: torch._C.Value) -> bool | None:
        """A condition that is a module's bool attribute no code assigns (MobileNetV2's
        ``use_res_connect``), or such an int attribute compared with a constant
        (ShuffleNetV2's ``self.stride == 1``): its value, so only the branch taken is
        followed. ``training`` is left open: fine-tuning takes the other branch."""
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
        if node.kind() in ("aten::eq", "aten::ne"):  # ShuffleNet's `self.stride == 1`
            a, b = (self.fixed(v) for v in node.inputs())
            if a is None or b is None or type(a) is not type(b):
                return None
            return (a == b) == (node.kind() == "aten::eq")
        fixed = self.fixed(cond)
        return fixed if isinstance(fixed, bool) else None

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
            roots = {(self.channel_key(s), s.flat, s.shuffle) for s in known}
            if len(known) == len(states) and len(roots) == 1:
                self.states[out] = known[0]
            else:
                for s in known:
                    self.block_state(s, "a branch whose outputs carry different channels",
                                     node)


def analyse(module: torch.jit.ScriptModule) -> ChannelGraph:
    """The channel groups of ``module``'s forward, coupled, with every slice they imply."""
    graph = module.inlined_graph  # a copy: the passes below never touch the module
    torch._C._jit_pass_constant_propagation(graph)  # folds F.relu's `if inplace:` and kin
    analysis = ScriptAnalysis(module)
    analysis.run(graph)
    layers = {name: kind for name, sub in module.named_modules()
              if (kind := str(getattr(sub, "original_name", type(sub).__name__))) in LAYER_TYPES}
    return analysis.result(layers)
