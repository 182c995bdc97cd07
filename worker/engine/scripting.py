"""``torch.jit.script`` for an ``nn.Module``, guarded against a stale entry in TorchScript's
table of builtins.

TorchScript decides that a module attribute is a builtin operator by looking its ``id()`` up
in ``torch.jit._builtins._builtin_table``. The table keeps the ids of op objects that may later
be freed: ``torch._ops._refresh_packet`` (run when ``torch.library`` adds an overload to an
existing op) registers a new object and drops the packet's old one. Once freed, its address
can hold an ordinary Python value, such as a conv's ``_reversed_padding_repeated_twice`` list.
Scripting that module then fails with "builtin cannot be used as a value". This happened to
us once in a test run: a GoogLeNet that scripts cleanly in a fresh process. A key whose
address now holds a value that cannot be called cannot be the op it was registered for, so it
is dropped before scripting. That is the whole guard; live operators are untouched.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.jit import _builtins


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(module)``, after forgetting builtin-table ids that its attributes
    occupy (see the module docstring); TorchScript's deprecation warning silenced, since
    TorchScript is still one of our formats."""
    forget_stale_builtins(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted: torch.jit.ScriptModule = torch.jit.script(module)
    return scripted


def forget_stale_builtins(module: nn.Module) -> list[str]:
    """Drops each builtin-table key that is the id of a non-callable attribute value of
    ``module`` or a submodule (a freed op's address, reused); returns the ops' names."""
    table: dict[int, str] = _builtins._get_builtin_table()  # type: ignore[no-untyped-call]
    dropped = []
    for sub in module.modules():
        for value in vars(sub).values():
            if not callable(value) and id(value) in table:
                dropped.append(table.pop(id(value)))
    return dropped
