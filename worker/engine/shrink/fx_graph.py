"""Channel dependency analysis on an exported program's FX graph: the second front end of the
rules in ``rules.py`` and ``layers.py`` (``graph.py`` is TorchScript's).

``ExportedProgram.module()`` is a ``GraphModule`` whose ``call_function`` nodes are ATen ops
with the same names and argument positions as in a TorchScript graph ("aten::conv2d",
"aten::batch_norm", "aten::flatten"...), its ``get_attr`` nodes name the parameters and
buffers by their state-dict paths, ``meta['val']`` carries each value's shape, and
``meta['stack_trace']`` the line of the model's source that made the node. Arguments are read
in schema order with the defaults filled in, so the rules read them by position as for
TorchScript. A value that is not a node (an int, a list, None) is a ``Const``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import fx

from worker.engine.exported import module_kinds
from worker.engine.shrink.ops import CONCAT, LAYER_TYPES, Opaque, own_frame
from worker.engine.shrink.rules import OpWalk
from worker.engine.shrink.state import ChannelGraph

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n([^\n]*)')


@dataclass(frozen=True, eq=False)  # hashed by identity, like a graph value
class Const:
    """A constant argument of an FX node: an int, a float, a list, None."""

    value: object


FxValue = fx.Node | Const


def aten_op(node: fx.Node) -> torch._ops.OpOverload | None:
    target = node.target
    if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
        return target
    return None


def arguments(node: fx.Node, op: torch._ops.OpOverload) -> list[FxValue]:
    """The op's arguments in schema order, defaults filled in."""
    out: list[FxValue] = []
    for i, arg in enumerate(op._schema.arguments):
        if i < len(node.args):
            value = node.args[i]
        elif arg.name in node.kwargs:
            value = node.kwargs[arg.name]
        else:
            value = arg.default_value if arg.has_default_value() else None
        out.append(value if isinstance(value, fx.Node) else Const(value))
    return out


def nodes_in(argument: object) -> list[fx.Node]:
    """The graph nodes inside an argument (a node, or a list or tuple holding nodes)."""
    if isinstance(argument, fx.Node):
        return [argument]
    if isinstance(argument, list | tuple):
        return [n for item in argument for n in nodes_in(item)]
    if isinstance(argument, dict):
        return [n for item in argument.values() for n in nodes_in(item)]
    return []


def location(node: fx.Node) -> str:
    """The innermost frame of ``meta['stack_trace']`` in the model's own code."""
    frames = _FRAME.findall(str(node.meta.get("stack_trace") or ""))
    return own_frame(list(reversed(frames)))  # the trace lists the innermost frame last


def _value(node: fx.Node) -> object:
    return node.meta.get("val")


class _FxAnalysis(OpWalk[fx.Node, FxValue]):
    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(dict(module.state_dict()))

    # -- the hooks ---------------------------------------------------------------------------
    def kind(self, node: fx.Node) -> str:
        op = aten_op(node)
        if op is not None:
            return str(op._schema.name)
        return str(getattr(node.target, "__name__", node.target))

    def output(self, node: fx.Node) -> FxValue:
        return node

    def constant(self, value: FxValue) -> object:
        return value.value if isinstance(value, Const) else None

    def items(self, value: FxValue) -> list[FxValue] | None:
        if isinstance(value, Const) and isinstance(value.value, list | tuple):
            return [v if isinstance(v, fx.Node) else Const(v) for v in value.value]
        return None

    def batch_size(self, value: FxValue) -> bool:
        return bool(isinstance(value, fx.Node) and value.target == torch.ops.aten.sym_size.int
                    and value.args[1] == 0)

    def location(self, node: fx.Node) -> str:
        return location(node)

    def value_rank(self, value: FxValue) -> int | None:
        val = _value(value) if isinstance(value, fx.Node) else None
        return val.dim() if isinstance(val, torch.Tensor) else None

    def param(self, value: FxValue) -> str | None:
        if isinstance(value, Const) and value.value is None:
            return None
        if isinstance(value, fx.Node) and value.op == "get_attr" and value.target in self.tensors:
            return str(value.target)
        raise Opaque("a weight that is not a parameter of a submodule")

    def is_number(self, value: FxValue) -> bool:
        val = value.value if isinstance(value, Const) else _value(value)
        return isinstance(val, int | float | torch.SymInt | torch.SymFloat) and not isinstance(
            val, bool)

    def computed(self, value: FxValue) -> bool:
        return (isinstance(value, fx.Node) and value.op != "get_attr"
                and isinstance(_value(value), torch.Tensor))

    # -- the walk ------------------------------------------------------------------------------
    def run(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            if node.op == "output":
                for value in nodes_in(node.args):
                    for part in self.states[value].parts if value in self.states else ():
                        self.groups[self.find(part)].feeds_output = True
            elif node.op not in ("placeholder", "get_attr"):
                self.visit(node)
        self.couple_shared_tensors()

    def visit(self, node: fx.Node) -> None:
        inside = nodes_in((node.args, node.kwargs))
        for value in inside:
            if value.op == "get_attr" and value.target in self.tensors:
                self.uses.setdefault(str(value.target), node)
        op = aten_op(node)
        kind = self.kind(node)
        if op is None:  # a submodule call, getitem, a higher-order op: nothing to follow
            for value in inside:
                if value in self.states:
                    self.block_state(self.states[value], f"{kind} (not an ATen op)", node)
            return
        ins = arguments(node, op)
        packed = [v for v in ins if isinstance(v, Const) for v in nodes_in(v.value)
                  if v in self.states]
        if not packed:
            self.op(node, kind, ins)
            return
        items = self.items(ins[0])
        if kind in CONCAT and items is not None and self.concat(node, items, ins[1]):
            return
        for value in packed:
            self.block_state(self.states[value], f"{kind} (a list of channel tensors)", node)


def analyse(module: fx.GraphModule) -> ChannelGraph:
    """The channel groups of an exported program's module, coupled, with every slice."""
    analysis = _FxAnalysis(module)
    analysis.run(module.graph)
    kinds = module_kinds(module)
    layers = {name: kinds[name] for name, _ in module.named_modules()
              if kinds.get(name) in LAYER_TYPES}
    return analysis.result(layers)
