"""Which channels of each group to keep: the spec's amount, scored over the whole group.

Group scoring rule: a channel's score is the *sum over the group's producers* (every Conv or
Linear whose output meets in the group, e.g. the stem and each residual branch's last conv)
of the L``n`` norm of that producer's filter/neuron for the channel. For a group with one
producer this is exactly ``ln_structured`` on that weight, so shrink removes the same slices
the masking method would zero. ``random_structured`` draws one uniform score per channel.

A group is pruned when at least one of its producers' weights is targeted by the spec
(include/exclude); its amount is the override of the first targeted producer, else the
spec's amount. A group that feeds the model's output (the logits) is never pruned.
"""

from __future__ import annotations

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
        return "+".join(self.group.producers)


def plan_groups(
    graph: ChannelGraph, tensors: dict[str, torch.Tensor], spec: PruningSpec,
    targeted: set[str], generator: torch.Generator | None,
) -> list[GroupPlan]:
    """One plan per group. Raises UnsupportedModel (a targeted group cannot be followed) or
    PruningError (an amount that would remove every channel of a group)."""
    check_supported(graph, targeted)
    method = make_method(spec.method.value, n=spec.n, dim=0)
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
        override = spec.override_for(f"{asked[0]}.weight")
        amount = spec.amount if override is None else override
        weights = [tensors[f"{p}.weight"].detach() for p in group.producers]
        if method.structured and spec.method.value == "random_structured":
            scores = method.scores(weights[0], generator)
        else:
            scores = torch.stack([method.scores(w, generator).cpu() for w in weights]).sum(0)
        pruned = _pruned_channels(group, scores.cpu(), amount, spec.round_to)
        plans.append(GroupPlan(group, torch.nonzero(~pruned).flatten(), True, None))
    return plans


def _pruned_channels(group: Group, scores: torch.Tensor, amount: float,
                     round_to: int) -> torch.Tensor:
    """The lowest-scoring channels, in whole blocks of ``group.block`` (a grouped conv's
    groups go whole: a block's score is the sum of its channels'); the count kept rounded up
    to a multiple of ``round_to`` channels (all of them when the group has fewer)."""
    name = "+".join(group.producers)
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
                "channel concatenation, gate multiply and flatten(1)"
            )
