"""The program of a ``.pt2`` archive (``models/model.json``), judged as JSON before torch
parses it: the schema version we read, every node's target on the operator allow-list
(``core.uploads.pt2_ops``), only plain argument kinds (no subgraphs, script objects or
operators as arguments), no guard code, and symbolic-shape expressions made only of tokens
sympy can evaluate harmlessly (torch hands them to ``sympy.sympify``, i.e. ``eval``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

from core.uploads.pt2_ops import ALLOWED_ATEN_OPS, ALLOWED_OPERATORS
from core.uploads.rejection import malformed, too_large, unsafe, unsupported

# The serialisation schema torch 2.14 writes and reads (torch/_export/serde/schema.py
# SCHEMA_VERSION; a test checks they agree). Another major version is another format.
SCHEMA_MAJOR: Final = 8
SCHEMA_MINOR: Final = 20
MAX_NODES: Final = 100_000

_TOP_KEYS: Final = frozenset({
    "graph_module", "opset_version", "range_constraints", "schema_version", "verifiers",
    "torch_version", "guards_code",
})  # fmt: skip
# Argument kinds a node may take: tensors, symbolic sizes and plain values. Absent on
# purpose: as_graph (a higher-order op's subgraph), as_custom_obj (torchbind/script objects),
# as_operator (an operator passed as a value), and the complex/opaque kinds.
_ARG_KINDS: Final = frozenset({
    "as_none", "as_tensor", "as_tensors", "as_optional_tensor", "as_optional_tensors",
    "as_int", "as_ints", "as_float", "as_floats", "as_bool", "as_bools", "as_string",
    "as_strings", "as_sym_int", "as_sym_ints", "as_sym_bool", "as_sym_bools", "as_sym_float",
    "as_sym_floats", "as_scalar_type", "as_memory_format", "as_layout", "as_device",
})  # fmt: skip
_INPUT_SPECS: Final = frozenset({"parameter", "buffer", "user_input", "tensor_constant",
                                 "constant_input"})
_OUTPUT_SPECS: Final = frozenset({"user_output", "buffer_mutation", "user_input_mutation"})
_ATEN_TARGET = re.compile(r"^torch\.ops\.aten\.([a-z0-9_]+)\.([A-Za-z0-9_]+)$")
_OPERATOR_TARGET = re.compile(r"^_operator\.([a-z_]+)$")
# sympy expressions torch writes: Symbol('s77', positive=True, integer=True), Mul(...),
# FloorDiv(...), integers. Tokens outside these refuse the archive (no dots, brackets,
# dunders or other names: nothing eval could reach beyond sympy's own constructors).
_EXPR_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|('[a-z][0-9]+')|(-?\d+)|([(),=+*/-]))")
_EXPR_NAMES: Final = frozenset({
    "Symbol", "Integer", "Add", "Mul", "Pow", "Max", "Min", "FloorDiv", "CeilDiv", "Mod",
    "PythonMod", "CleanDiv", "ModularIndexing", "positive", "integer", "nonnegative",
    "True", "False",
})  # fmt: skip
_SYMBOL = re.compile(r"^[a-z][0-9]+$")
MAX_EXPR_CHARS: Final = 4096


def check_program(program: object, member: str) -> None:
    """Refuse a program JSON torch.export.load should not be handed."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise malformed(f"{member} is not an exported program (no graph_module object)")
    extra = sorted(set(program) - _TOP_KEYS)
    if extra:
        raise malformed(f"{member} has fields this service does not read: {', '.join(extra)}")
    _check_schema_version(program.get("schema_version"), member)
    if program.get("guards_code"):
        raise unsafe(f"{member} carries guards_code (Python source torch compiles into the "
                     "loaded module); programs exported by torch.export.export have none")
    opsets = program.get("opset_version", {})
    if not isinstance(opsets, dict) or set(opsets) - {"aten"}:
        raise unsafe(f"{member} declares operator sets {sorted(opsets)}; only aten is accepted")
    graph_module = program["graph_module"]
    graph = graph_module.get("graph")
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise malformed(f"{member} has no graph nodes")
    if graph.get("custom_obj_values"):
        raise unsafe(f"{member} holds script objects (custom_obj_values); they are refused")
    if graph_module.get("treespec_namedtuple_fields"):
        raise unsupported(f"{member} takes or returns namedtuples; export a model that "
                          "takes a tensor and returns a tensor")
    _check_signature(graph_module.get("signature"), member)
    _check_dynamic_batch(graph_module["signature"], graph.get("tensor_values"), member)
    _check_nodes(graph["nodes"], member)
    for key in ("inputs", "outputs"):
        for arg in graph.get(key, []):
            _check_argument(arg, f"{member}: the graph's {key}")
    _check_range_constraints(program.get("range_constraints", {}), member)
    for expr in _expressions(program):
        check_expression(expr, member)


def _check_schema_version(version: Any, member: str) -> None:
    if not isinstance(version, dict) or not all(
        isinstance(version.get(k), int) for k in ("major", "minor")
    ):
        raise malformed(f"{member} has no schema_version {{major, minor}}")
    major, minor = version["major"], version["minor"]
    if major != SCHEMA_MAJOR or minor > SCHEMA_MINOR:
        raise unsupported(
            f"{member} uses export schema {major}.{minor}; this service reads "
            f"{SCHEMA_MAJOR}.0 to {SCHEMA_MAJOR}.{SCHEMA_MINOR} (torch 2.14): save the program "
            "with torch 2.14"
        )


def _check_signature(signature: Any, member: str) -> None:
    if not isinstance(signature, dict):
        raise malformed(f"{member} has no graph signature")
    for key, allowed in (("input_specs", _INPUT_SPECS), ("output_specs", _OUTPUT_SPECS)):
        specs = signature.get(key)
        if not isinstance(specs, list):
            raise malformed(f"{member}: the graph signature has no {key}")
        for spec in specs:
            kinds = set(spec) if isinstance(spec, dict) else {"?"}
            if not kinds <= allowed:
                raise unsafe(
                    f"{member}: the graph signature's {key} hold {', '.join(sorted(kinds))} "
                    "(script objects or effect tokens); only tensors, parameters, buffers and "
                    "constants are accepted"
                )


def _check_dynamic_batch(signature: dict[str, Any], values: Any, member: str) -> None:
    """Jobs run batches of many sizes: each tensor input's first dimension must be symbolic."""
    if not isinstance(values, dict):
        raise malformed(f"{member} has no tensor_values")
    for spec in signature["input_specs"]:
        tensor = spec.get("user_input", {}).get("arg", {}).get("as_tensor")
        if not isinstance(tensor, dict):
            continue
        sizes = values.get(tensor.get("name"), {}).get("sizes") or [{}]
        if isinstance(sizes[0], dict) and "as_int" in sizes[0]:
            raise unsupported(
                f"{member}: the input {tensor.get('name')!r} has a fixed batch size "
                f"{sizes[0]['as_int']}; export with a dynamic batch: dynamic_shapes="
                '({0: torch.export.Dim("batch")},)'
            )


def _check_nodes(nodes: list[Any], member: str) -> None:
    if len(nodes) > MAX_NODES:
        raise too_large(f"{member} has {len(nodes)} nodes; the limit is {MAX_NODES}")
    for index, node in enumerate(nodes):
        if not isinstance(node, dict) or not isinstance(node.get("target"), str):
            raise malformed(f"{member}: node {index} has no target")
        name = node.get("name", index)
        check_target(node["target"], f"{member}: node {name!r}")
        for argument in node.get("inputs", []):
            arg = argument.get("arg") if isinstance(argument, dict) else None
            _check_argument(arg, f"{member}: node {name!r}")
        for output in node.get("outputs", []):
            _check_argument(output, f"{member}: node {name!r}")


def check_target(target: str, where: str) -> None:
    """A node's target: an allowed ATen op or Python operator, nothing else."""
    aten = _ATEN_TARGET.match(target)
    if aten is not None and aten.group(1) in ALLOWED_ATEN_OPS:
        return
    operator = _OPERATOR_TARGET.match(target)
    if operator is not None and operator.group(1) in ALLOWED_OPERATORS:
        return
    if target.startswith("torch.ops.higher_order."):
        what = "a higher-order op (it carries subgraphs)"
    elif aten is not None:
        what = "an ATen op outside the allow-list"
    else:
        what = "not an ATen op (a custom, torchbind or Python callable)"
    raise unsafe(f"{where} calls {target!r}, {what}; only the pure tensor ops of "
                 "core/uploads/pt2_ops.py are accepted")


def _check_argument(arg: Any, where: str) -> None:
    if not isinstance(arg, dict) or len(arg) != 1:
        raise malformed(f"{where} has an argument that is not one tagged value")
    (kind,) = arg
    if kind not in _ARG_KINDS:
        raise unsafe(f"{where} takes an argument of kind {kind!r}; only tensors, sizes and "
                     "plain values are accepted (no subgraphs, script objects or operators)")


def _check_range_constraints(constraints: Any, member: str) -> None:
    if not isinstance(constraints, dict):
        raise malformed(f"{member}: range_constraints is not an object")
    for symbol, bounds in constraints.items():
        if not _SYMBOL.match(symbol) or not isinstance(bounds, dict) or not all(
            v is None or isinstance(v, int) for v in bounds.values()
        ):
            raise unsafe(f"{member}: range constraint {symbol!r} is not a symbol with "
                         "integer bounds")


def _expressions(value: Any) -> Iterator[Any]:
    """Every ``expr_str`` in the program (tensor sizes, strides, symbolic values)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "expr_str" in item:
                yield item["expr_str"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_expression(expr: Any, where: str) -> None:
    """A symbolic-shape expression made only of sympy constructors, symbols and integers."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        raise malformed(f"{where} has a symbolic expression that is not a short string")
    at = 0
    while at < len(expr.rstrip()):
        token = _EXPR_TOKEN.match(expr, at)
        if token is None or (token.group(1) is not None and token.group(1) not in _EXPR_NAMES):
            raise unsafe(f"{where} has the symbolic expression {expr[:200]!r}, which holds "
                         "more than sympy symbols, integers and arithmetic; torch would "
                         "evaluate it")
        at = token.end()
