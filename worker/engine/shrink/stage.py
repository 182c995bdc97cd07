"""The pipeline's shrink step: ``prepare`` (analysis and plan, before any data is read, so
an unsupported model is refused at once) and ``Prepared.apply`` (mask, slice, rebuild)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import worker.engine.shrink.fx_graph as fx_graph
from core.jobs.error_codes import JobErrorCode
from core.jobs.report import ShapeChange, ShrinkGroup, ShrinkReport, TensorReport
from core.jobs.spec import PruningSpec
from worker.engine import pruning, scripting
from worker.engine.errors import EngineError
from worker.engine.methods import PruningError
from worker.engine.shrink.graph import ChannelGraph, analyse
from worker.engine.shrink.plan import GroupPlan, UnsupportedModel, plan_groups
from worker.engine.shrink.rewrite import (
    follow_shapes,
    generic_groups,
    generic_shuffles,
    rebuild_registry,
    registry_widths,
    sliced_tensors,
    swap_tensors,
    zero_removed,
)
from worker.engine.shrink.script_nodes import where as location


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
        # channels of the group's first producer (a group's units are its channels, unless
        # a channel shuffle couples several channels into one unit)
        first = [f"{p.group.producers[0]}.weight" for p in self.plans]
        groups = [
            ShrinkGroup(producers=p.group.producers, channels_before=before[w].shape[0],
                        channels_after=after[w].shape[0], pruned=p.pruned, reason=p.reason,
                        tensors=sorted({s.tensor for s in p.group.slices}))
            for p, w in zip(self.plans, first, strict=True)
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
    # channels removed before a shuffle written with constant sizes (any amount: a target
    # job plans these groups again with its own)
    pruned = {p.group.id for p in plans if p.pruned}
    where = {at for at, groups in graph.constant_shuffles.items() if groups & pruned}
    if where:
        model = _generic_shuffles(model, where)
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


def _generic_shuffles(model: nn.Module, where: set[str]) -> torch.jit.ScriptModule:
    """The model with its constant channel-shuffle sizes computed from the tensors (the
    same function on its shapes), or refused naming the shuffle the rewrite cannot edit."""
    edited, done = (generic_shuffles(model, where) if isinstance(model, torch.jit.ScriptModule)
                    else (None, set()))
    missing = sorted(where - done)
    if edited is None or missing:
        raise EngineError(
            JobErrorCode.UNSUPPORTED_MODEL,
            f"a channel shuffle at {location((missing or sorted(where))[0])} writes its "
            "channel counts as constants, in code shrink cannot edit (a free function of a "
            "scripted model); compute them from x.size(1) so that they follow the shrunk "
            "channels, or exclude the layers before it (pruning.exclude)",
        )
    return edited


def channel_graph(model: nn.Module) -> ChannelGraph:
    """The channel analysis of any module a job holds: an exported program's module through
    its FX graph, a TorchScript module through its graph, a registry module scripted."""
    if isinstance(model, torch.fx.GraphModule):
        return fx_graph.analyse(model)
    return analyse(model if isinstance(model, torch.jit.ScriptModule) else scripting.script(model))
