"""Apply a shrink plan: slice the tensors, and put them into a smaller module.

Two kinds of module come in. A registry architecture is rebuilt with its new widths
(``registry.build(name, widths)``) and loads the sliced state_dict strictly, which proves the
widths describe the tensors. A TorchScript module keeps its code: its Conv/Linear/BatchNorm
forwards read the shapes from the tensors themselves, so swapping in the smaller parameters
and buffers gives a module that runs with the new shapes and saves as an ordinary archive.
(Scripted submodules keep their old ``in_channels``/``out_channels`` constants, which their
forwards never read.)
"""

from __future__ import annotations

import torch
from torch import nn

from core.jobs.architectures import ARCHITECTURES
from worker.engine import registry
from worker.engine.shrink.plan import GroupPlan


def _indices(keep: torch.Tensor, inner: int) -> torch.Tensor:
    """Channel indices -> entry indices when each channel owns ``inner`` entries (C*H*W)."""
    if inner == 1:
        return keep
    return (keep[:, None] * inner + torch.arange(inner)).flatten()


def sliced_tensors(
    tensors: dict[str, torch.Tensor], plans: list[GroupPlan]
) -> dict[str, torch.Tensor]:
    """The new value of every tensor a pruned group slices (others are unchanged)."""
    out: dict[str, torch.Tensor] = {}
    for plan in plans:
        if not plan.pruned:
            continue
        for piece in plan.group.slices:
            current = out.get(piece.tensor, tensors[piece.tensor]).detach()
            index = _indices(plan.keep, piece.inner).to(current.device)
            out[piece.tensor] = current.index_select(piece.dim, index).contiguous()
    return out


@torch.no_grad()
def zero_removed(module: nn.Module, plans: list[GroupPlan]) -> None:
    """The masked model: zero every producer-side slice of the removed channels (filters,
    biases, BatchNorm scale and shift), so each removed channel outputs exactly 0 and the
    shrunk model computes the same function."""
    state = module.state_dict()
    for plan in plans:
        if not plan.pruned:
            continue
        removed = torch.ones(plan.group.channels, dtype=torch.bool)
        removed[plan.keep] = False
        for piece in plan.group.slices:
            if piece.dim != 0 or piece.tensor.endswith(("running_mean", "running_var")):
                continue
            tensor = state[piece.tensor]
            tensor[removed.to(tensor.device)] = 0


def swap_into_script(module: torch.jit.ScriptModule, new: dict[str, torch.Tensor]) -> None:
    """Replace parameters and buffers of a TorchScript module by name, in place."""
    parameters = dict(module.named_parameters())
    for name, tensor in new.items():
        *path, attr = name.split(".")
        owner: nn.Module = module
        for part in path:
            owner = getattr(owner, part)
        if name in parameters:
            value: torch.Tensor = nn.Parameter(tensor, requires_grad=parameters[name].requires_grad)
        else:
            value = tensor
        setattr(owner, attr, value)


def rebuild_registry(
    architecture: str, module: nn.Module, new: dict[str, torch.Tensor], widths: dict[str, int]
) -> nn.Module:
    """A fresh registry module with ``widths`` holding the module's (sliced) state."""
    state = {**module.state_dict(), **new}
    rebuilt = registry.build(architecture, widths)
    rebuilt.load_state_dict(state, strict=True)
    first = next(module.parameters())
    return rebuilt.to(first.device)


def registry_widths(architecture: str, tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Layer -> output width, read from the (sliced) weights, for the layers the registry
    module takes as constructor arguments."""
    return {layer: int(tensors[f"{layer}.weight"].shape[0])
            for layer in ARCHITECTURES[architecture].widths}
