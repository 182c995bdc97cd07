"""The channel rules both front ends share: one op at a time, read through the hooks of
``AnalysisBase`` (``state.py``), so a TorchScript node and an FX node of the same ATen op
are followed the same way.

``OpWalk.op`` takes a node whose op is ``kind`` and whose arguments are ``ins`` (in the
op's schema order) and records what it does to the channel groups flowing in: a Conv/Linear
consumes a group and opens one (``layers.py``), BatchNorm slices its vectors, elementwise
ops pass channels through or couple two groups, flatten/view/mean move the channel
dimension; anything else blocks the groups that reach it, naming the op and its line.
"""

from __future__ import annotations

from dataclasses import replace

import worker.engine.shrink.layers as layers
from worker.engine.shrink.ops import (
    COUPLING,
    LAYERS,
    METADATA,
    NONZERO,
    PASSTHROUGH,
    RESHAPE,
    SCALE,
    Opaque,
    State,
)
from worker.engine.shrink.state import AnalysisBase, N, V


class OpWalk(AnalysisBase[N, V]):
    def op(self, node: N, kind: str, ins: list[V]) -> None:
        tracked = [v for v in ins if v in self.states]
        try:
            if kind in LAYERS:
                layers.layer(self, node, ins)
            elif kind == "aten::batch_norm":
                layers.batch_norm(self, node, ins)
            elif not tracked:
                self.untracked(node, kind, ins)
            else:
                self.follow(node, kind, ins, tracked)
        except Opaque as exc:
            for value in tracked:
                self.block_state(self.states[value], f"{kind} ({exc})", node)

    def untracked(self, node: N, kind: str, ins: list[V]) -> None:
        """A node no group flows into: only ranks matter (for a later Linear/flatten)."""
        if kind in RESHAPE:
            rank = self.reshape_rank(kind, ins)
            if rank is not None:
                self.ranks[self.output(node)] = rank

    def follow(self, node: N, kind: str, ins: list[V], tracked: list[V]) -> None:
        state = self.states[tracked[0]]
        if kind in METADATA:
            return
        first = ins[0] is tracked[0]
        if self.moved(node, kind, ins, state, first):
            return
        if kind in PASSTHROUGH or kind in NONZERO:
            if not first:
                raise Opaque("a channel tensor in an unexpected argument")
            if kind in NONZERO and state.nonzero is None:
                state = replace(state, nonzero=f"{kind} at {self.location(node)}")
            self.states[self.output(node)] = state
        elif kind in COUPLING and len(tracked) == 2:
            self.states[self.output(node)] = self.couple(node, state, self.states[tracked[1]])
        elif kind in SCALE and len(tracked) == 1 and first and self.is_number(ins[1]):
            self.states[self.output(node)] = state  # x * 0.5 keeps zeros zero
        elif kind in ("aten::mul", "aten::mul_") and len(tracked) == 1 and self.computed(
                ins[1] if first else ins[0]):
            # times a computed tensor (stochastic depth's per-sample noise): zeros stay zero
            self.states[self.output(node)] = state
        elif kind in RESHAPE and first:
            self.states[self.output(node)] = self.flatten_state(kind, ins, state)
        elif kind == "aten::mean" and first:
            self.states[self.output(node)] = self.mean_state(ins, state)
        else:
            raise Opaque("an op the channel analysis does not know")

    def moved(self, node: N, kind: str, ins: list[V], state: State, first: bool) -> bool:
        """A front end's hook for ops that move channels to new positions (TorchScript:
        chunk and channel shuffle, ``shuffle.py``): True when it recorded the node's
        outputs. Here none are followed: they stop at the rules below."""
        return False

    def couple(self, node: N, a: State, b: State) -> State:
        """Two channel tensors meet elementwise (residual add, gate multiply): one group per
        position (after a chunk or shuffle, the channels position by position). A product's
        removed channel is 0 when either factor's is."""
        if a.flat != b.flat:
            raise Opaque("adds a flattened and an unflattened tensor")
        if a.shuffle or b.shuffle:
            raise Opaque("midway through a channel shuffle")
        if a.layout is None and b.layout is None:
            sizes = [[self.groups[g].channels for g in s.parts] for s in (a, b)]
            if sizes[0] != sizes[1]:
                raise Opaque(f"channel parts {sizes[0]} and {sizes[1]} do not line up")
            parts = tuple(self.union(x, y, node) for x, y in zip(a.parts, b.parts, strict=True))
            layout = None
        else:
            pairs = [self.layout(a), self.layout(b)]
            if len(pairs[0]) != len(pairs[1]):
                raise Opaque(f"{len(pairs[0])} and {len(pairs[1])} channels do not line up")
            for x, y in zip(*pairs, strict=True):
                self.couple_channels(x, y)
            parts, layout = a.parts, a.layout
        if self.kind(node).startswith("aten::mul"):
            nonzero = a.nonzero if a.nonzero and b.nonzero else None
        else:
            nonzero = a.nonzero or b.nonzero
        rank = a.rank if a.rank is not None else b.rank
        return State(parts, rank, a.flat, nonzero, layout)

    def concat(self, node: N, items: list[V], dim: V) -> bool:
        """A concatenation of ``items`` along ``dim``: its output carries their parts in
        order when every item's channels are known and the dim is the channel dim."""
        states = [self.states.get(v) for v in items]
        ranks = {s.rank for s in states if s is not None}
        if any(s is None or s.flat or s.shuffle for s in states) or len(ranks) != 1:
            return False  # a tensor of unknown channels among them: offsets unknown
        rank = ranks.pop()
        at = self.constant(dim)
        if rank is None or not isinstance(at, int) or at % rank != 1:
            return False
        known = [s for s in states if s is not None]
        nonzero = next((s.nonzero for s in known if s.nonzero), None)
        if all(s.layout is None for s in known):
            parts = tuple(p for s in known for p in s.parts)
            self.states[self.output(node)] = State(parts, rank, nonzero=nonzero)
        else:  # after a chunk or shuffle: position by position
            layout = tuple(x for s in known for x in self.layout(s))
            self.states[self.output(node)] = self.make_state(layout, rank, nonzero=nonzero)
        return True

    def reshape_rank(self, kind: str, ins: list[V]) -> int | None:
        if kind == "aten::flatten":
            start, end = self.constant(ins[1]), self.constant(ins[2])
            if isinstance(start, int) and end == -1 and start >= 0:
                return start + 1
            return None
        items = self.items(ins[1])
        return len(items) if items is not None else None

    def flatten_state(self, kind: str, ins: list[V], state: State) -> State:
        """flatten(x, 1) / x.view(x.size(0), -1): channels become channel-major features."""
        if kind == "aten::flatten":
            start, end = self.constant(ins[1]), self.constant(ins[2])
            if start == 1 and end == -1:
                return replace(state, rank=2, flat=True)
            if isinstance(start, int) and start >= 2 and end == -1:
                return replace(state, rank=start + 1)
            raise Opaque(f"flatten({start}, {end}) merges the channel dimension into the batch")
        items = self.items(ins[1])
        if items is None or len(items) != 2 or self.constant(items[1]) != -1:
            raise Opaque("a reshape to fixed sizes; write x.flatten(1) or "
                         "x.view(x.size(0), -1) so the size follows the channels")
        if self.batch_size(items[0]):
            return replace(state, rank=2, flat=True)
        raise Opaque("a reshape whose batch size is not x.size(0); write x.flatten(1)")

    def mean_state(self, ins: list[V], state: State) -> State:
        """Global average pooling (mean over dims >= 2) keeps the channels at dim 1."""
        dims, keepdim = self.constant(ins[1]), self.constant(ins[2])
        if state.flat or not isinstance(dims, list) or state.rank is None:
            raise Opaque("a mean over dimensions the analysis cannot see")
        real = [d % state.rank for d in dims]
        if any(d < 2 for d in real):
            raise Opaque("a mean over the batch or channel dimension")
        return replace(state, rank=state.rank if keepdim else state.rank - len(real))
