"""The spec reference table of docs/spec.md, generated from ``core.jobs.spec.JobSpec``.

    .venv/bin/python docs/spec_table.py           # print it
    .venv/bin/python docs/spec_table.py --write   # rewrite it between docs/spec.md's SPEC markers

One row per field, found by walking the pydantic models: its path in the JSON spec, its type,
its default and what it allows (the field's constraints and description). A block that is an
object of its own (``pruning``, ``finetune.distill``, ``search``...) gets a row, then its
fields; a union of blocks told apart by ``kind`` (``pruning.schedule``) lists each kind's
fields under ``kind=<name>``.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import annotated_types  # noqa: E402
from pydantic import BaseModel, TypeAdapter  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

from core.jobs.spec import JobSpec  # noqa: E402
from docs.tables import main, write_between  # noqa: E402

START, END = "<!-- SPEC -->", "<!-- /SPEC -->"
PAGE = ROOT / "docs" / "spec.md"
HEADER = ["| field | type | default | allowed |", "| --- | --- | --- | --- |"]


def _args(annotation: Any) -> tuple[Any, ...]:
    """The members of a union (``X | None``, ``Annotated[A | B, ...]``), else the type alone."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _args(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for arg in typing.get_args(annotation) for a in _args(arg))
    return (annotation,)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def type_name(annotation: Any) -> str:
    """How the JSON spec spells a type: ``int``, ``number``, ``[int, int]``, ``list of string``."""
    members = _args(annotation)
    if len(members) > 1:
        names = list(dict.fromkeys(type_name(m) for m in members))
        return " or ".join(names)
    (one,) = members
    origin, args = typing.get_origin(one), typing.get_args(one)
    if origin is typing.Literal:
        return " or ".join(dict.fromkeys("int" if isinstance(a, int) else "string" for a in args))
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"{{{type_name(args[0])}: {type_name(args[1])}}}"
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if one is type(None):
        return "null"
    if _is_model(one):
        return "object"
    if isinstance(one, type) and issubclass(one, Enum):
        return "string"
    return {bool: "bool", int: "int", float: "number", str: "string"}.get(one, str(one))


def _choices(annotation: Any) -> list[str]:
    """The values an enum or a ``Literal`` allows (of a list's items, for a list), as JSON."""
    out: list[str] = []
    for member in _args(annotation):
        if typing.get_origin(member) is typing.Literal:
            out += [json.dumps(a) for a in typing.get_args(member)]
        elif typing.get_origin(member) is list:
            out += _choices(typing.get_args(member)[0])
        elif isinstance(member, type) and issubclass(member, Enum):
            out += [json.dumps(e.value) for e in member]
    return out


def _bounds(field: FieldInfo) -> list[str]:
    """The field's numeric range, lengths and pattern, e.g. ``[0, 100]``, ``(0, 10]``."""
    low = high = ""
    out: list[str] = []
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            low = f"[{m.ge}"
        elif isinstance(m, annotated_types.Gt):
            low = f"({m.gt}"
        elif isinstance(m, annotated_types.Le):
            high = f"{m.le}]"
        elif isinstance(m, annotated_types.Lt):
            high = f"{m.lt})"
        elif isinstance(m, annotated_types.MinLen):
            out.append(f"at least {m.min_length} long")
        elif isinstance(m, annotated_types.MaxLen):
            out.append(f"at most {m.max_length} long")
        elif getattr(m, "pattern", None):
            out.append(f"matches `{m.pattern}`")
    if low or high:
        out.insert(0, f"{low or '(-inf'}, {high or 'inf)'}")
    return out


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    shown = json.dumps(TypeAdapter(Any).dump_python(value, mode="json"))
    return "(see below)" if isinstance(value, BaseModel) and len(shown) > 40 else shown


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _doc(block: Any) -> str:
    """The first paragraph of a block's docstring, on one line."""
    text = " ".join((block.__doc__ or "").split("\n\n")[0].split())
    return text.replace("``", "`").rstrip(".")


def _row(path: str, field: FieldInfo, annotation: Any, only: str = "") -> str:
    allowed = _bounds(field)
    # A field that states its own JSON enum (output_format: only the uploadable formats)
    # is shown with that enum, not with its Python type's members.
    stated = [m.json_schema["enum"] for m in field.metadata
              if isinstance(getattr(m, "json_schema", None), dict) and "enum" in m.json_schema]
    choices = [json.dumps(v) for v in stated[0]] if stated else _choices(annotation)
    if choices:
        allowed.insert(0, "one of " + ", ".join(f"`{c}`" for c in choices))
    blocks = [m for m in _args(annotation) if _is_model(m)]
    description = field.description or (_doc(blocks[0]) if len(blocks) == 1 else "")
    if description:
        allowed.append(description)
    if only:
        allowed.insert(0, f"kind `{only}` only")
    return (f"| `{path}` | {_cell(type_name(annotation))} | `{_cell(_default(field))}` "
            f"| {_cell('; '.join(allowed))} |")


def _kinds(path: str, blocks: list[type[BaseModel]]) -> list[str]:
    """A union of blocks told apart by ``kind``: a row for ``kind``, then each kind's fields."""
    kinds = [typing.get_args(b.model_fields["kind"].annotation)[0] for b in blocks]
    about = "; ".join(f"`{k}`: {_doc(b)}" for k, b in zip(kinds, blocks, strict=True))
    out = [f"| `{path}.kind` | string | `{json.dumps(kinds[0])}` | one of "
           + ", ".join(f"`{json.dumps(k)}`" for k in kinds) + f"; {_cell(about)} |"]
    for kind, block in zip(kinds, blocks, strict=True):
        out += walk(block, path + ".", kind)
    return out


def walk(model: type[BaseModel], prefix: str = "", only: str = "") -> list[str]:
    """Rows for every field of ``model`` and of the blocks inside it, in declaration order;
    ``only`` names the ``kind`` these fields belong to, in a union of blocks."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        path, annotation = prefix + name, field.annotation
        if only and name == "kind":
            continue
        out.append(_row(path, field, annotation, only))
        blocks = [m for m in _args(annotation) if _is_model(m)]
        if len(blocks) == 1:
            out += walk(blocks[0], path + ".", only)
        elif blocks:
            out += _kinds(path, blocks)
    return out


def rows() -> list[str]:
    return HEADER + walk(JobSpec)


def write(page: Path = PAGE) -> None:
    write_between(page, START, END, rows())


if __name__ == "__main__":
    main(rows, write)
