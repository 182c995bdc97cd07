"""A TorchScript module's own copy, in a compilation unit of its own.

Modules scripted in one process share their compiled methods with every module of the same
type, and passes that edit a method's graph in place (our grouped-conv rewrite, torch's
TorchScript-to-export converter, which inlines) would change them all. Saving and loading
gives a copy whose graphs belong to it alone."""

from __future__ import annotations

import io

import torch


def reloaded(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """``module`` saved and loaded again, on its device, in its train/eval mode."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    device = next(iter(module.state_dict().values()), torch.zeros(0)).device
    loaded: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
        buffer, map_location=device)
    return loaded.train(module.training)
