"""Which tensors a spec targets, the masks it asks for, and what they did (report rows)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from core.jobs.report import TensorReport, Totals
from core.jobs.spec import Method, PruningSpec, Scope
from worker.engine.exported import EXPORTED_KIND
from worker.engine.methods import PruningMethod, global_masks, make_method
from worker.engine.nm import kernel_eligibility, nm_mask, pattern_holds

# Default targets: the weights of these layers (TorchScript submodules by ``original_name``).
PRUNABLE_KINDS = frozenset(
    {"Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
     "ConvTranspose3d"}
)


@dataclass
class Target:
    name: str  # parameter name, e.g. "fc1.weight"
    param: nn.Parameter
    layer_kind: str


def layer_kind(module: nn.Module) -> str:
    """"Linear", "Conv2d"...: a scripted submodule keeps its Python class in original_name,
    an exported program's parameter holder in ``exported_kind`` (``engine/exported.py``)."""
    if isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", type(module).__name__))
    return str(getattr(module, EXPORTED_KIND, type(module).__name__))


def _parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, str]]:
    for module_name, module in model.named_modules():
        kind = layer_kind(module)
        for pname, param in module.named_parameters(recurse=False):
            yield (f"{module_name}.{pname}" if module_name else pname), param, kind


def find_targets(model: nn.Module, spec: PruningSpec) -> list[Target]:
    """Targeted float parameters, in the model's parameter order."""
    targets = []
    for name, param, kind in _parameters(model):
        default = kind in PRUNABLE_KINDS and name.rsplit(".", 1)[-1] == "weight"
        if param.is_floating_point() and spec.selects(name, default):
            targets.append(Target(name, param, kind))
    return targets


def effective_spec(spec: PruningSpec) -> PruningSpec:
    """The spec as applied: structured methods are always layerwise."""
    if spec.method.structured and spec.scope is Scope.GLOBAL:
        return spec.model_copy(update={"scope": Scope.LAYERWISE})
    return spec


def compute_masks(
    targets: list[Target], spec: PruningSpec, generator: torch.Generator | None = None,
    previous: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks by parameter name. Overridden tensors are pruned on their own; the rest
    together (global) or one by one (layerwise). Units the ``previous`` masks pruned are
    pruned first (no revival). Raises PruningError for impossible specs."""
    if spec.method is Method.SEMI_STRUCTURED:
        n, m = spec.nm
        return {t.name: nm_mask(t.param, n, m) for t in targets}
    method = make_method(spec.method.value, n=spec.n, dim=spec.dim)
    prior = previous or {}
    masks: dict[str, torch.Tensor] = {}
    pooled: list[Target] = []
    for target in targets:
        override = spec.override_for(target.name)
        if override is not None:
            masks[target.name] = _layer_mask(method, target, override, generator, prior)
        elif spec.scope is Scope.GLOBAL and not method.structured:
            pooled.append(target)
        else:
            masks[target.name] = _layer_mask(method, target, spec.amount, generator, prior)
    pooled_masks = global_masks(
        method, [t.param.detach() for t in pooled], spec.amount, generator=generator,
        previous=[prior.get(t.name) for t in pooled],
    )
    masks.update({t.name: m for t, m in zip(pooled, pooled_masks, strict=True)})
    return {t.name: masks[t.name] for t in targets}  # parameter order


def _layer_mask(
    method: PruningMethod, target: Target, amount: int | float,
    generator: torch.Generator | None, prior: dict[str, torch.Tensor],
) -> torch.Tensor:
    return method.compute_mask(
        target.param.detach(), amount, name=target.name, generator=generator,
        previous=prior.get(target.name),
    )


@torch.no_grad()
def apply_masks(targets: list[Target], masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned entries in place (the masks are folded into the weights)."""
    for target in targets:
        target.param.mul_(masks[target.name])


def tensor_reports(targets: list[Target], spec: PruningSpec) -> list[TensorReport]:
    """Per targeted tensor: zeros counted in the weights themselves, as a user would."""
    reports = []
    for target in targets:
        weight = target.param.detach()
        zeros = int((weight == 0).sum())
        row = TensorReport(
            name=target.name,
            layer_kind=target.layer_kind,
            shape=list(weight.shape),
            elements=weight.numel(),
            zeros=zeros,
            sparsity=zeros / max(weight.numel(), 1),
        )
        if spec.method.structured and weight.dim() > 0:
            dim = spec.dim % weight.dim()
            slices = weight.movedim(dim, 0).reshape(weight.size(dim), -1)
            row.dim = dim
            row.slices = weight.size(dim)
            row.slices_zeroed = int((slices == 0).all(dim=1).sum())
        if spec.method is Method.SEMI_STRUCTURED:
            _nm_fields(row, weight, spec)
        reports.append(row)
    return reports


def _nm_fields(row: TensorReport, weight: torch.Tensor, spec: PruningSpec) -> None:
    n, m = spec.nm
    eligibility = kernel_eligibility(weight, n, m)
    row.nm = [n, m]
    row.nm_exact = pattern_holds(weight, n, m)
    row.semi_structured_eligible = eligibility.eligible
    row.semi_structured_note = eligibility.note


def totals(elements_and_zeros: list[tuple[int, int]]) -> Totals:
    elements = sum(e for e, _ in elements_and_zeros)
    zeros = sum(z for _, z in elements_and_zeros)
    return Totals(elements=elements, zeros=zeros, sparsity=zeros / max(elements, 1))


def parameter_totals(model: nn.Module) -> Totals:
    """Zeros over every parameter of the model (buffers excluded)."""
    return totals(
        [(p.numel(), int((p.detach() == 0).sum())) for p in model.parameters()]
    )
