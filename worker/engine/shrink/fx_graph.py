"""Channel dependency analysis on an exported program's FX graph: the second front end of the
rules in ``rules.py`` and ``layers.py`` (``graph.py`` is TorchScript's).

``ExportedProgram.module()`` is a ``GraphModule`` whose ``call_function`` nodes are ATen ops
with the same names and argument positions as in a TorchScript graph ("aten::conv2d",
"aten::batch_norm", "aten::flatten"...), its ``get_attr`` nodes name the parameters and
buffers by their state-dict paths, ``meta['val']`` carries each value's shape, and
``meta['stack_trace']`` the line of the model's source that made the node. Arguments are read
in schema order with the defaults filled in, so the rules read them by position as for
TorchScript. A value that is not a node (an int, a list, None) is a ``Const``.

A core-ATen program (after ``run_decompositions``) spells a few things differently, and the
front end reads them as the ATen op they decompose: ``aten.convolution`` as
``aten::_convolution`` (the same leading arguments), ``_native_batch_norm_legit_no_training``
and ``max_pool2d_with_indices`` as ``aten::batch_norm`` and ``aten::max_pool2d`` (their
output 0, taken by ``getitem``), ``addmm(bias, x, w.t())`` as ``aten::linear``, and flatten's
``view(x, [x.size(0), C*H*W])`` as ``view(x, [x.size(0), -1])`` (the size is made -1 in the
shrunk program, ``ChannelGraph.free_sizes``).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

import torch
from torch import fx

from worker.engine.exported import module_kinds
from worker.engine.shrink.ops import CONCAT, LAYER_TYPES, Opaque, own_frame
from worker.engine.shrink.rules import OpWalk
from worker.engine.shrink.state import ChannelGraph

# core ATen name -> the ATen op whose rule reads it (the same leading arguments)
_ALIASES = {
    "aten::convolution": "aten::_convolution",
    "aten::_native_batch_norm_legit_no_training": "aten::batch_norm",
    "aten::max_pool2d_with_indices": "aten::max_pool2d",
    "aten::_adaptive_avg_pool2d": "aten::adaptive_avg_pool2d",
    "aten::_unsafe_view": "aten::view",
}
# ops returning a tuple whose output 0 is the tensor the rule describes
_TUPLES = frozenset({"aten::_native_batch_norm_legit_no_training",
                     "aten::max_pool2d_with_indices"})
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


def op_name(node: fx.Node) -> str | None:
    """The ATen name a rule reads the node by ("aten::conv2d"), None if not an ATen op."""
    op = aten_op(node)
    if op is None:
        return None
    name = str(op._schema.name)
    return _ALIASES.get(name, name)


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
        self.free_sizes: list[str] = []  # views whose fixed size becomes -1 (see above)

    # -- the hooks ---------------------------------------------------------------------------
    def kind(self, node: fx.Node) -> str:
        name = op_name(node)
        return name if name is not None else str(getattr(node.target, "__name__", node.target))

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
        if node.target is operator.getitem:
            self.item(node)
            return
        if op is None:  # a submodule call, a higher-order op: nothing to follow
            for value in inside:
                if value in self.states:
                    self.block_state(self.states[value], f"{kind} (not an ATen op)", node)
            return
        kind, ins = self.core(node, kind, arguments(node, op))
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

    def item(self, node: fx.Node) -> None:
        """``getitem(t, 0)`` of an op in ``_TUPLES`` is its tensor; another output of one
        that carries channels, if used, blocks them."""
        source, index = node.args
        if not isinstance(source, fx.Node) or source not in self.states:
            return
        name = aten_op(source)
        if name is not None and str(name._schema.name) in _TUPLES and index == 0:
            self.states[node] = self.states[source]
        elif node.users:
            self.block_state(self.states[source], f"output {index} of {self.kind(source)}",
                             node)

    def core(self, node: fx.Node, kind: str, ins: list[FxValue]) -> tuple[str, list[FxValue]]:
        """Core ATen's spellings of linear and of flatten, read as those (module docstring)."""
        if kind == "aten::addmm" and self.constant(ins[3]) == 1 and self.constant(ins[4]) == 1:
            weight = _transposed_weight(ins[2])
            if weight is not None:
                return "aten::linear", [ins[1], weight, ins[0]]
        if kind == "aten::mm" and (weight := _transposed_weight(ins[1])) is not None:
            return "aten::linear", [ins[0], weight, Const(None)]
        if kind in ("aten::view", "aten::reshape") and ins[0] in self.states:
            items, source = self.items(ins[1]), _value(ins[0])  # type: ignore[arg-type]
            if (items is not None and len(items) == 2 and self.batch_size(items[0])
                    and isinstance(source, torch.Tensor) and source.dim() > 2
                    and self.constant(items[1]) == math.prod(source.shape[1:])):
                self.free_sizes.append(node.name)
                first = ins[1].value[0]  # type: ignore[union-attr,index]
                return kind, [ins[0], Const([first, -1])]
        return kind, ins


def _transposed_weight(value: FxValue) -> fx.Node | None:
    """``w.t()`` / ``w.permute(1, 0)`` of a parameter: the parameter's node."""
    if not isinstance(value, fx.Node) or not value.args:
        return None
    weight = value.args[0]
    transposed = value.target == torch.ops.aten.t.default or (
        value.target == torch.ops.aten.permute.default and value.args[1] in ([1, 0], (1, 0)))
    if transposed and isinstance(weight, fx.Node) and weight.op == "get_attr":
        return weight
    return None


def analyse(module: fx.GraphModule) -> ChannelGraph:
    """The channel groups of an exported program's module, coupled, with every slice."""
    analysis = _FxAnalysis(module)
    analysis.run(module.graph)
    kinds = module_kinds(module)
    layers = {name: kinds[name] for name, _ in module.named_modules()
              if kinds.get(name) in LAYER_TYPES}
    graph = analysis.result(layers)
    graph.free_sizes = analysis.free_sizes
    return graph
