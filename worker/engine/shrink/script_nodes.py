"""What a TorchScript graph node or value says that the analysis and the rewrite read: a
constant's value, the source location of a node, and a key matching a node across a save
and load (``graph.py``, ``shuffle.py`` and ``rewrite.py`` share these)."""

from __future__ import annotations

import re

import torch

from worker.engine.shrink.ops import own_frame


def constant(value: torch._C.Value) -> object:
    """A prim::Constant's value, else None."""
    if value.node().kind() != "prim::Constant":
        return None
    return value.toIValue()


def location(node: torch._C.Node) -> str:
    """'model.py:15: return self.fc(x.view(-1, 400))' from the node's source range."""
    return where(str(node.sourceRange()))


def where(text: str) -> str:
    """``location`` of a source range's text.

    Scripted graphs say 'File "model.py", line 15' followed by the code, traced ones
    'model.py(15): forward' for each frame of the Python stack, innermost first."""
    lines = text.splitlines()
    here = next((i for i, ln in enumerate(lines) if "<--- HERE" in ln), 0)
    code = lines[here - 1] if here > 0 else ""
    match = re.search(r'File "([^"]+)", line (\d+)', text)
    if match is not None:
        return own_frame([(match.group(1), match.group(2), code)])
    return own_frame([(m.group(1), m.group(2), code) for line in lines
                      if (m := re.match(r"(.+?)\((\d+)\): ", line))])


def source_key(node: torch._C.Node) -> str:
    """The node's own source range, the same in a module and in its saved and loaded copy
    (which appends a 'Serialized' range of its own code)."""
    text = str(node.sourceRange()).strip()
    head = text.split("\nSerialized")[0].strip()
    return head if head and not head.startswith("Serialized") else text
