"""Which channels of each group to keep: the spec's amount, scored over the whole group.

Group scoring rule: a channel's score is the *sum over the group's producers* (every Conv or
Linear whose output meets in the group, e.g. the stem and each residual branch's last conv)
of the L``n`` norm of that producer's filter/neuron for the channel. For a group with one
producer this is exactly ``ln_structured`` on that weight, so shrink removes the same slices
the masking method would zero. ``random_structured`` draws one uniform score per channel.

A group is pruned when at least one of its producers' weights is targeted by the spec
(include/exclude); its amount is the first override naming the group (``group_amounts``:
by its name, the producers joined by "+", or by one of its targeted producers' weights),
else the spec's amount. A group that feeds the model's output (the logits) is never pruned.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch

from core.jobs.spec import PruningSpec
from worker.engine.methods import PruningError, amount_to_count, make_method, smallest_k
from worker.engine.shrink.graph import ChannelGraph, Group


class UnsupportedModel(Exception):
    """A targeted group passes through something the analysis cannot rewrite."""


@dataclass
class GroupPlan:
    group: Group
    keep: torch.Tensor  # sorted int64 indices of the channels kept
    pruned: bool
    reason: str | None  # why a group is kept whole

    @property
    def name(self) -> str:
        return self.group.name


def plan_groups(
    graph: ChannelGraph, tensors: dict[str, torch.Tensor], spec: PruningSpec,
    targeted: set[str], generator: torch.Generator | None,
) -> list[GroupPlan]:
    """One plan per group. Raises UnsupportedModel (a targeted group cannot be followed) or
    PruningError (an amount that would remove every channel of a group)."""
    check_supported(graph, targeted)
    amounts = group_amounts(graph, spec, targeted)
    plans = []
    for group in graph.groups:
        asked = [p for p in group.producers if f"{p}.weight" in targeted]
        everything = torch.arange(group.channels)
        if not asked:
            plans.append(GroupPlan(group, everything, False, "not targeted by the spec"))
            continue
        if group.feeds_output:
            plans.append(GroupPlan(group, everything, False, "feeds the model's output"))
            continue
        scores = _scores(group, tensors, spec, generator)
        pruned = _pruned_channels(group, scores.cpu(), amounts[group.id], spec.round_to)
        plans.append(GroupPlan(group, torch.nonzero(~pruned).flatten(), True, None))
    return plans


def group_amounts(graph: ChannelGraph, spec: PruningSpec,
                  targeted: set[str]) -> dict[int, int | float]:
    """The amount of each group the spec targets, by group id: the first override whose
    pattern matches the group's name (its producers joined by "+", as the report's shrink
    groups and the errors give them) or the weight of one of its targeted producers, else
    ``spec.amount``. A pattern that matches no such group is a PruningError: in a shrink
    job it would change nothing, silently."""
    keys: dict[int, list[str]] = {}
    for group in graph.groups:
        asked = [f"{p}.weight" for p in group.producers if f"{p}.weight" in targeted]
        if asked:
            keys[group.id] = [group.name, *asked]
    amounts: dict[int, int | float] = {}
    matched: set[str] = set()
    for group_id, names in keys.items():
        hits = [pattern for pattern in spec.overrides  # "a + b" as the report page shows it
                if any(fnmatch.fnmatchcase(name, pattern.replace(" + ", "+"))
                       for name in names)]
        matched.update(hits)
        amounts[group_id] = spec.overrides[hits[0]] if hits else spec.amount
    for pattern in spec.overrides:
        if pattern not in matched:
            raise PruningError(_unmatched(pattern, graph, [k[0] for k in keys.values()]))
    return amounts


def _unmatched(pattern: str, graph: ChannelGraph, names: list[str]) -> str:
    """Why an override pattern names no group, and the names it could use."""
    untargeted = [f"{p}.weight" for g in graph.groups for p in g.producers
                  if fnmatch.fnmatchcase(f"{p}.weight", pattern)]
    if untargeted:
        hint = f"{untargeted[0]} is not targeted (pruning.include / pruning.exclude)"
    else:
        hint = f"the groups shrink can prune: {', '.join(map(repr, names[:8]))}" + (
            f" and {len(names) - 8} more" if len(names) > 8 else "")
    return (f"pruning.overrides[{pattern!r}] names no channel group: with shrink, an "
            "override names a group (its producers joined by '+') or a targeted weight of "
            f"one of its producers; {hint}")


def _scores(group: Group, tensors: dict[str, torch.Tensor], spec: PruningSpec,
            generator: torch.Generator | None) -> torch.Tensor:
    """One score per unit of the group: the sum of its channels' scores over the producers
    (a unit is one channel, or the channels a shuffle removes together)."""
    method = make_method(spec.method.value, n=spec.n, dim=0)
    weights = {f"{p}.weight": tensors[f"{p}.weight"].detach() for p in group.producers}
    if spec.method.value == "random_structured":
        first = next(iter(weights.values()))
        if first.shape[0] == group.channels:
            return method.scores(first, generator)
        return torch.rand(group.channels, generator=generator)
    per_producer = []
    for name, weight in weights.items():
        scores = method.scores(weight, generator).cpu()
        piece = next((s for s in group.slices if s.tensor == name and s.dim == 0), None)
        if piece is None or piece.pairs is None:
            per_producer.append(scores)
            continue
        units, at = torch.tensor(piece.pairs).T
        per_producer.append(torch.zeros(group.channels).index_add_(0, units, scores[at]))
    return torch.stack(per_producer).sum(0)


def _pruned_channels(group: Group, scores: torch.Tensor, amount: float,
                     round_to: int) -> torch.Tensor:
    """The lowest-scoring channels, in whole blocks of ``group.block`` (a grouped conv's
    groups go whole: a block's score is the sum of its channels'); the count kept rounded up
    to a multiple of ``round_to`` channels (all of them when the group has fewer)."""
    name = group.name
    units = group.channels // group.block
    what = f"channel group {name}" if group.block == 1 else (
        f"channel group {name} ({units} blocks of {group.block} channels)")
    k = amount_to_count(amount, units, what)
    if k >= units:
        raise PruningError(
            f"amount {amount} would remove all {group.channels} channels of {name}; "
            "a group keeps at least one channel"
        )
    step = math.lcm(group.block, round_to) // group.block  # in blocks
    k = units - min(units, -(-(units - k) // step) * step)
    blocks = scores.reshape(units, group.block).sum(1)
    return smallest_k(blocks, k).repeat_interleave(group.block)


def check_supported(graph: ChannelGraph, targeted: set[str]) -> None:
    """Refuse before any work when a group the spec asks to prune has blockers."""
    for group in graph.groups:
        asked = [p for p in group.producers if f"{p}.weight" in targeted]
        if asked and group.channels % group.block and not group.feeds_output:
            group.blockers.append(f"a grouped conv's blocks of {group.block} channels that "
                                  f"do not divide {group.channels}")
        if asked and group.blockers and not group.feeds_output:
            raise UnsupportedModel(
                f"cannot remove channels of {', '.join(group.producers)} (asked for by "
                f"{asked[0]}.weight): they reach {group.blockers[0]}. Exclude these layers "
                "(pruning.exclude) or rewrite that code; shrink follows Conv (grouped and "
                "depthwise too), Linear, BatchNorm, activations, pooling, residual add, "
                "channel concatenation, chunk and shuffle, gate multiply and flatten(1)"
            )
