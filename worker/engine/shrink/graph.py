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

import re
from collections.abc import Iterable

import torch

from worker.engine.shrink.ops import CONCAT, LAYER_TYPES, Opaque, own_frame
from worker.engine.shrink.rules import OpWalk
from worker.engine.shrink.state import ChannelGraph, Group, Slice

__all__ = ["ChannelGraph", "Group", "Slice", "analyse", "constant", "location"]

_TRAINING = "training"
_NUMBER_TYPES = ("IntType", "FloatType", "NumberType")


def location(node: torch._C.Node) -> str:
    """'model.py:15: return self.fc(x.view(-1, 400))' from the node's source range.

    Scripted graphs say 'File "model.py", line 15' followed by the code, traced ones
    'model.py(15): forward' for each frame of the Python stack, innermost first."""
    text = str(node.sourceRange())
    lines = text.splitlines()
    here = next((i for i, ln in enumerate(lines) if "<--- HERE" in ln), 0)
    code = lines[here - 1] if here > 0 else ""
    match = re.search(r'File "([^"]+)", line (\d+)', text)
    if match is not None:
        return own_frame([(match.group(1), match.group(2), code)])
    return own_frame([(m.group(1), m.group(2), code) for line in lines
                      if (m := re.match(r"(.+?)\((\d+)\): ", line))])


def constant(value: torch._C.Value) -> object:
    """A prim::Constant's value, else None."""
    if value.node().kind() != "prim::Constant":
        return None
    return value.toIValue()


class _Analysis(OpWalk[torch._C.Node, torch._C.Value]):
    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__(dict(module.state_dict()))
        self.module = module
        self.paths: dict[torch._C.Value, str] = {}
        self.containers: dict[torch._C.Value, list[torch._C.Value]] = {}
        self.assigned: set[str] = set()  # attributes forward assigns (prim::SetAttr)

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
        if kind in ("prim::TupleIndex", "aten::__getitem__") and ins[0] in self.containers:
            index, items = constant(ins[1]), self.containers[ins[0]]
            if isinstance(index, int) and -len(items) <= index < len(items):
                self.unpack([items[index]], [node.output()])
                return True
        packed = [self.states[v] for v in ins for v in self.containers.get(v, [])
                  if v in self.states]
        if not packed:
            return False
        if kind in CONCAT and self.concat(node, self.containers[ins[0]], ins[1]):
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


def analyse(module: torch.jit.ScriptModule) -> ChannelGraph:
    """The channel groups of ``module``'s forward, coupled, with every slice they imply."""
    graph = module.inlined_graph  # a copy: the passes below never touch the module
    torch._C._jit_pass_constant_propagation(graph)  # folds F.relu's `if inplace:` and kin
    analysis = _Analysis(module)
    analysis.run(graph)
    layers = {name: kind for name, sub in module.named_modules()
              if (kind := str(getattr(sub, "original_name", type(sub).__name__))) in LAYER_TYPES}
    return analysis.result(layers)
