"""What each TorchScript op does to a channel group: the tables and the shape rules.

Shared by the walk in ``graph.py``: which ops pass channels through unchanged, which couple
two groups, how flatten/reshape/mean move the channel dimension, and where a node comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

# Ops that keep the channel dimension where it is and map a zero channel to zero.
PASSTHROUGH = frozenset(
    f"aten::{name}"
    for name in (
        "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "gelu", "silu", "silu_",
        "tanh", "tanh_", "elu", "elu_", "hardtanh", "hardtanh_", "hardswish", "hardswish_",
        "mish", "dropout", "dropout_", "feature_dropout", "alpha_dropout", "contiguous",
        "clone", "detach", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d",
        "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
        "adaptive_avg_pool3d", "lp_pool2d", "upsample_nearest2d", "upsample_bilinear2d",
        "gelu_", "selu", "selu_", "mish_", "feature_alpha_dropout", "adaptive_max_pool2d",
    )
)
# Elementwise ops that keep the channel dimension but map 0 elsewhere (sigmoid(0) = 0.5): a
# removed channel is no longer zero after them, until a multiply by a zero channel (the
# squeeze-and-excitation gate) or an affine BatchNorm whose removed slices are zeroed.
NONZERO = frozenset({"aten::sigmoid", "aten::sigmoid_", "aten::hardsigmoid",
                     "aten::hardsigmoid_", "aten::softplus", "aten::exp"})
# Elementwise ops of two tensors: two groups meeting here are coupled (one group).
COUPLING = frozenset({"aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::mul",
                       "aten::mul_"})
SCALE = frozenset({"aten::mul", "aten::mul_", "aten::div", "aten::div_"})
# Ops that read a tensor's metadata only: fine on any shape, nothing to rewrite.
METADATA = frozenset({"aten::size", "aten::dim", "aten::len", "aten::numel", "prim::shape",
                       "aten::__is__", "aten::__isnot__", "prim::dtype", "prim::device",
                       "prim::layout", "prim::is_cuda", "prim::requires_grad"})
CONV = frozenset({"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution"})
TRANSPOSED = frozenset({"aten::conv_transpose1d", "aten::conv_transpose2d",
                        "aten::conv_transpose3d"})
CONCAT = frozenset({"aten::cat", "aten::concat"})


@dataclass(frozen=True)
class State:
    """A tensor value whose dimension 1 carries channel groups ``parts``, in order (one group,
    or several after a concatenation)."""

    parts: tuple[int, ...]
    rank: int | None  # None: unknown
    flat: bool = False  # channel-major flattened: feature = channel * inner + rest
    nonzero: str | None = None  # the op that made removed channels non-zero, and where

    @property
    def group(self) -> int:
        return self.parts[0]


class Opaque(Exception):
    """The node does something with a group's channels that we cannot rewrite."""


def location(node: torch._C.Node) -> str:
    """'model.py:15: return self.fc(x.view(-1, 400))' from the node's source range.

    Scripted graphs say 'File "model.py", line 15' followed by the code, traced ones
    'model.py(15): forward'. Only the text inside the archive is quoted: the paths are the
    uploader's and are never opened here."""
    text = str(node.sourceRange())
    match = re.search(r'File "([^"]+)", line (\d+)', text) or _traced_frame(text)
    if match is None:
        return "unknown location"
    where = f"{match.group(1)[-120:]}:{match.group(2)}"
    lines = text.splitlines()
    here = next((i for i, ln in enumerate(lines) if "<--- HERE" in ln), 0)
    code = lines[here - 1].strip()[:160] if here > 0 else ""
    return f"{where}: {code}" if code else where


_TORCH_FILE = re.compile(r"(^|[/\\])torch[/\\]")


def _traced_frame(text: str) -> re.Match[str] | None:
    """A traced node's Python stack, innermost first: the first frame in the uploader's own
    code (an op inside ``nn.Conv2d`` is reported where the model calls the layer), else the
    innermost."""
    frames = [m for line in text.splitlines() if (m := re.match(r"(.+?)\((\d+)\): ", line))]
    own = next((m for m in frames if not _TORCH_FILE.search(m.group(1))), None)
    return own or (frames[0] if frames else None)


def is_number(value: torch._C.Value) -> bool:
    return value.type().kind() in ("IntType", "FloatType", "NumberType")


def _constant(value: torch._C.Value) -> object:
    node = value.node()
    if node.kind() != "prim::Constant":
        return None
    return value.toIValue()


def conv_groups(node: torch._C.Node, ins: list[torch._C.Value]) -> int | None:
    """A conv's ``groups`` (None: not a constant); 0 for a transposed ``_convolution``."""
    if node.kind() == "aten::_convolution":
        if _constant(ins[6]) is not False:
            return 0
        groups = _constant(ins[8])
    else:
        groups = _constant(ins[6])
    return groups if isinstance(groups, int) else None


def constant(value: torch._C.Value) -> object:
    return _constant(value)


def _list_items(value: torch._C.Value) -> list[torch._C.Value] | None:
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        return list(node.inputs())
    if node.kind() == "prim::Constant":
        items = value.toIValue()
        if isinstance(items, list):
            return [value] * len(items)  # only the length is used
    return None


def reshape_rank(node: torch._C.Node, ins: list[torch._C.Value], rank: int | None) -> int | None:
    if node.kind() == "aten::flatten":
        start, end = _constant(ins[1]), _constant(ins[2])
        if isinstance(start, int) and end == -1 and start >= 0:
            return start + 1
        return None
    items = _list_items(ins[1])
    return len(items) if items is not None else None


def flatten_state(node: torch._C.Node, ins: list[torch._C.Value], state: State) -> State:
    """flatten(x, 1) / x.view(x.size(0), -1): channels become channel-major features."""
    if node.kind() == "aten::flatten":
        start, end = _constant(ins[1]), _constant(ins[2])
        if start == 1 and end == -1:
            return replace(state, rank=2, flat=True)
        if isinstance(start, int) and start >= 2 and end == -1:
            return replace(state, rank=start + 1)
        raise Opaque(f"flatten({start}, {end}) merges the channel dimension into the batch")
    items = _list_items(ins[1])
    if items is None or len(items) != 2 or _constant(items[1]) != -1:
        raise Opaque("a reshape to fixed sizes; write x.flatten(1) or "
                      "x.view(x.size(0), -1) so the size follows the channels")
    first = items[0]
    while first.node().kind() in ("aten::Int", "prim::NumToTensor", "aten::ScalarImplicit"):
        first = next(first.node().inputs())  # traced graphs wrap x.size(0) in tensors
    if first.node().kind() == "aten::size" and _constant(list(first.node().inputs())[1]) == 0:
        return replace(state, rank=2, flat=True)
    raise Opaque("a reshape whose batch size is not x.size(0); write x.flatten(1)")


def mean_state(node: torch._C.Node, ins: list[torch._C.Value], state: State) -> State:
    """Global average pooling (mean over dims >= 2) keeps the channels at dim 1."""
    dims, keepdim = _constant(ins[1]), _constant(ins[2])
    if state.flat or not isinstance(dims, list) or state.rank is None:
        raise Opaque("a mean over dimensions the analysis cannot see")
    real = [d % state.rank for d in dims]
    if any(d < 2 for d in real):
        raise Opaque("a mean over the batch or channel dimension")
    return replace(state, rank=state.rank if keepdim else state.rank - len(real))


