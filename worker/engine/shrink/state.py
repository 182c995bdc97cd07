"""What the channel analysis records: groups, the tensor slices they imply, the state of each
graph value, and the union-find with its bookkeeping that every rule module shares."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from worker.engine.shrink.ops import Opaque, State, location


@dataclass(frozen=True)
class Slice:
    """Tensor ``tensor`` is indexed along ``dim`` by a group's channels: channel ``c`` owns
    entries ``(offset + c) * inner ... + inner - 1`` (``inner`` > 1: a Linear after flatten,
    C*H*W; ``offset`` > 0: the group's place in a concatenation)."""

    tensor: str
    dim: int
    inner: int = 1
    offset: int = 0


@dataclass
class Group:
    """Channels that must be removed together."""

    id: int
    channels: int
    producers: list[str] = field(default_factory=list)  # module paths: "layer1.conv1"
    slices: list[Slice] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)  # why it cannot be pruned
    feeds_output: bool = False
    block: int = 1  # channels go in aligned blocks of this many (a grouped conv's groups)


@dataclass
class ChannelGraph:
    groups: list[Group]
    tensor_shapes: dict[str, list[int]]
    # Conv/Linear layers no group holds, each with the op and source line that stopped it
    refusals: list[str] = field(default_factory=list)
    grouped: bool = False  # a grouped/depthwise conv follows its channels: see rewrite.py


class AnalysisBase:
    """Union-find over groups, per-value states, and the blockers and slices they collect."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module
        self.tensors = dict(module.state_dict())
        self.parent: list[int] = []
        self.groups: list[Group] = []
        self.states: dict[torch._C.Value, State] = {}
        self.paths: dict[torch._C.Value, str] = {}
        self.ranks: dict[torch._C.Value, int] = {}
        self.containers: dict[torch._C.Value, list[torch._C.Value]] = {}
        self.refusals: dict[str, str] = {}  # layer -> why it holds no group
        self.uses: dict[str, torch._C.Node] = {}  # tensor -> the first node that reads it
        self.grouped = False
        self.assigned: set[str] = set()  # attributes forward assigns (prim::SetAttr)

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def new_group(self, channels: int, producer: str) -> int:
        self.parent.append(len(self.groups))
        self.groups.append(Group(id=len(self.groups), channels=channels, producers=[producer]))
        return len(self.groups) - 1

    def union(self, a: int, b: int, node: torch._C.Node | None, what: str = "") -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.groups[ra].channels != self.groups[rb].channels:
                what = what or (node.kind() if node is not None else "")
                self.block(ra, f"{what} of {self.groups[ra].channels} and "
                               f"{self.groups[rb].channels} channels", node)
            self.parent[rb] = ra
            self.groups[ra].block = math.lcm(self.groups[ra].block, self.groups[rb].block)
        return ra

    def block(self, group: int, why: str, node: torch._C.Node | None) -> None:
        where = f" at {location(node)}" if node is not None else ""
        self.groups[self.find(group)].blockers.append(f"{why}{where}")

    def block_state(self, state: State, why: str, node: torch._C.Node | None) -> None:
        for part in state.parts:
            self.block(part, why, node)

    def refuse(self, layer: str, why: str, node: torch._C.Node) -> None:
        """A Conv/Linear the analysis cannot follow: it holds no group, and says why."""
        self.refusals.setdefault(layer, f"layer {layer}: {why} at {location(node)}")

    def add_slice(self, group: int, tensor: str | None, dim: int, inner: int = 1,
                  offset: int = 0) -> None:
        if tensor is not None:
            self.groups[self.find(group)].slices.append(Slice(tensor, dim, inner, offset))

    def channels(self, state: State) -> int:
        return sum(self.groups[self.find(g)].channels for g in state.parts)

    def offsets(self, state: State) -> list[tuple[int, int]]:
        """(group, offset in channels) of each part."""
        out, at = [], 0
        for g in state.parts:
            out.append((g, at))
            at += self.groups[self.find(g)].channels
        return out

    def rank(self, value: torch._C.Value) -> int | None:
        if value in self.ranks:
            return self.ranks[value]
        state = self.states.get(value)
        if state is not None:
            return state.rank
        typ = value.type()
        return typ.dim() if isinstance(typ, torch.TensorType) else None

    def param(self, value: torch._C.Value) -> str | None:
        """State-dict name of a parameter/buffer input, None for an absent (None) one: a
        ``None`` constant, or an optional attribute such as a scripted conv's ``bias=False``."""
        if value.type().kind() == "NoneType":
            return None
        path = self.paths.get(value)
        if path is not None and path in self.tensors:
            return path
        if path is not None and self._attribute(path) is None:
            return None
        raise Opaque("a weight that is not a parameter of a submodule")

    def _attribute(self, path: str) -> object:
        owner: object = self.module
        for part in path.split("."):
            owner = getattr(owner, part, Opaque)
        return owner
