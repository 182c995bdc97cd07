"""The pipeline's shrink step: ``prepare`` (analysis and plan, before any data is read, so
an unsupported model is refused at once) and ``Prepared.apply`` (mask, slice, rebuild)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

import worker.engine.shrink.fx_graph as fx_graph
from core.jobs.error_codes import JobErrorCode
from core.jobs.report import ShapeChange, ShrinkGroup, ShrinkReport, TensorReport
from core.jobs.spec import PruningSpec
from worker.engine import pruning
from worker.engine.errors import EngineError
from worker.engine.methods import PruningError
from worker.engine.shrink.graph import ChannelGraph, analyse
from worker.engine.shrink.plan import GroupPlan, UnsupportedModel, plan_groups
from worker.engine.shrink.rewrite import (
    follow_shapes,
    generic_groups,
    rebuild_registry,
    registry_widths,
    sliced_tensors,
    swap_tensors,
    zero_removed,
)


@dataclass
class Shrunk:
    model: nn.Module
    rows: list[TensorReport]  # the targeted tensors, as masked, with old and new shapes
    report: ShrinkReport


@dataclass
class Prepared:
    model: nn.Module
    spec: PruningSpec
    architecture: str | None
    graph: ChannelGraph
    plans: list[GroupPlan]

    def apply(self) -> Shrunk:
        """Zero the removed channels (the masked model, whose rows the report shows), then
        cut them out and return the smaller module."""
        targets = pruning.find_targets(self.model, self.spec)
        zero_removed(self.model, self.plans)
        rows = pruning.tensor_reports(targets, self.spec)
        before = dict(self.model.state_dict())
        new = sliced_tensors(before, self.plans)
        after = {**before, **new}
        if isinstance(self.model, torch.fx.GraphModule | torch.jit.ScriptModule):
            model = self._swapped(new)  # an upload keeps its code, with smaller tensors
            producers = {p for g in self.graph.groups for p in g.producers}
            widths = {name: int(after[f"{name}.weight"].shape[0])
                      for name, _ in model.named_modules() if name in producers}
        else:
            assert self.architecture is not None  # a plain module comes from the registry
            widths = registry_widths(self.architecture, after)
            model = rebuild_registry(self.architecture, self.model, new, widths)
        for row in rows:
            row.shape_before, row.shape_after = row.shape, list(after[row.name].shape)
        return Shrunk(model, rows, self._report(before, after, widths, model))

    def _swapped(self, new: dict[str, torch.Tensor]) -> nn.Module:
        """An upload with the sliced tensors swapped in; a grouped conv's ``groups`` made to
        follow its tensors (TorchScript: computed in the code; .pt2: the argument scaled, and
        a core-ATen flatten's size made -1)."""
        swap_tensors(self.model, new)
        if isinstance(self.model, torch.fx.GraphModule):
            follow_shapes(self.model, self.graph)
            return self.model
        if isinstance(self.model, torch.jit.ScriptModule) and self.graph.grouped:
            return generic_groups(self.model)
        return self.model

    def _report(self, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                widths: dict[str, int], model: nn.Module) -> ShrinkReport:
        groups = [
            ShrinkGroup(producers=p.group.producers, channels_before=p.group.channels,
                        channels_after=int(p.keep.numel()), pruned=p.pruned, reason=p.reason,
                        tensors=sorted({s.tensor for s in p.group.slices}))
            for p in self.plans
        ]
        changes = [ShapeChange(name=k, shape_before=list(v.shape),
                               shape_after=list(after[k].shape))
                   for k, v in before.items() if v.shape != after[k].shape]
        return ShrinkReport(
            architecture=self.architecture, widths=widths, scoring=scoring_rule(self.spec),
            groups=groups, tensors=changes,
            parameters_before=sum(int(before[name].numel())
                                  for name, _ in self.model.named_parameters()),
            parameters_after=sum(p.numel() for p in model.parameters()),
        )


def scoring_rule(spec: PruningSpec) -> str:
    if spec.method.value == "random_structured":
        return "one uniform random score per channel of the group"
    return (f"per channel: the sum, over the group's producers, of the L{spec.n} norm of "
            "the producer's filter/neuron for that channel; the lowest go")


def prepare(model: nn.Module, spec: PruningSpec, architecture: str | None,
            seed: int) -> Prepared:
    """Analyse and plan; raises EngineError (unsupported_model, invalid_spec,
    no_prunable_tensors) before anything is changed."""
    graph = channel_graph(model)
    targeted = {t.name for t in pruning.find_targets(model, spec)}
    generator = torch.Generator().manual_seed(seed)
    try:
        plans = plan_groups(graph, dict(model.state_dict()), spec, targeted, generator)
    except UnsupportedModel as exc:
        raise EngineError(JobErrorCode.UNSUPPORTED_MODEL, str(exc)) from exc
    except PruningError as exc:
        raise EngineError(JobErrorCode.INVALID_SPEC, str(exc)) from exc
    if not any(p.pruned for p in plans):
        refused = [r for r in graph.refusals
                   if f"{r.removeprefix('layer ').split(':')[0]}.weight" in targeted]
        if refused:  # the layers asked for open no group: say which op stopped each
            raise EngineError(
                JobErrorCode.UNSUPPORTED_MODEL,
                "shrink cannot follow the channels of the targeted layers: "
                + "; ".join(refused[:5]) + (" ..." if len(refused) > 5 else "")
                + ". Exclude these layers (pruning.exclude) or rewrite that code",
            )
        kept = "; ".join(f"{p.name}: {p.reason}" for p in plans)
        raise EngineError(
            JobErrorCode.NO_PRUNABLE_TENSORS,
            f"shrink found no channel group to prune ({kept}); target the weights of hidden "
            "Conv/Linear layers (pruning.include)",
        )
    return Prepared(model, spec, architecture, graph, plans)


def channel_graph(model: nn.Module) -> ChannelGraph:
    """The channel analysis of any module a job holds: an exported program's module through
    its FX graph, a TorchScript module through its graph, a registry module scripted."""
    if isinstance(model, torch.fx.GraphModule):
        return fx_graph.analyse(model)
    return analyse(model if isinstance(model, torch.jit.ScriptModule) else _script(model))


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, still our format
        warnings.simplefilter("ignore", FutureWarning)
        scripted: torch.jit.ScriptModule = torch.jit.script(model)
    return scripted
