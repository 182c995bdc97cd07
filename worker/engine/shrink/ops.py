"""What each ATen op does to a channel group: the tables, and what both front ends share.

The walk in ``rules.py`` reads these tables: which ops pass channels through unchanged, which
couple two groups, which read metadata only. The op names are the same for a TorchScript
graph and an exported program's FX graph ("aten::relu"), and so are argument positions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
# Ops that read a tensor's metadata only: fine on any shape, nothing to rewrite. (aten::sym_*:
# an exported program's x.size(0).)
METADATA = frozenset({"aten::size", "aten::dim", "aten::len", "aten::numel", "prim::shape",
                       "aten::__is__", "aten::__isnot__", "prim::dtype", "prim::device",
                       "prim::layout", "prim::is_cuda", "prim::requires_grad",
                       "aten::sym_size", "aten::sym_numel", "aten::sym_stride"})
CONV = frozenset({"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution"})
TRANSPOSED = frozenset({"aten::conv_transpose1d", "aten::conv_transpose2d",
                        "aten::conv_transpose3d"})
CONCAT = frozenset({"aten::cat", "aten::concat"})
RESHAPE = frozenset({"aten::flatten", "aten::view", "aten::reshape"})
LAYERS = CONV | TRANSPOSED | {"aten::linear"}
# Module types whose weights the accounting expects in a group or a refusal.
LAYER_TYPES = frozenset({"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                         "ConvTranspose3d", "Linear"})


Layout = tuple[tuple[int, int], ...]  # per channel position: (group, the group's channel)


@dataclass(frozen=True)
class State:
    """A tensor value whose dimension 1 carries channel groups ``parts``, in order (one group,
    or several after a concatenation). After a chunk or a channel shuffle the positions are
    no longer whole groups in order: ``layout`` then names each position's group and channel
    (``parts`` lists the groups in order of first appearance)."""

    parts: tuple[int, ...]
    rank: int | None  # None: unknown
    flat: bool = False  # channel-major flattened: feature = channel * inner + rest
    nonzero: str | None = None  # the op that made removed channels non-zero, and where
    layout: Layout | None = None  # None: the parts' channels in order
    # midway through a channel shuffle: (groups, transposed yet, where it starts), channels
    # in dims 1 and 2 (TorchScript only: see shuffle.py)
    shuffle: tuple[int, bool, str] | None = None

    @property
    def group(self) -> int:
        return self.parts[0]


class Opaque(Exception):
    """The node does something with a group's channels that we cannot rewrite."""


def conv_groups(kind: str, argument: Callable[[int], object]) -> int | None:
    """A conv's ``groups`` (None: not a constant); 0 for a transposed ``_convolution``.
    ``argument(i)``: the constant value of the op's i-th argument (None if not constant)."""
    if kind == "aten::_convolution":
        if argument(6) is not False:
            return 0
        groups = argument(8)
    else:
        groups = argument(6)
    return groups if isinstance(groups, int) else None


_TORCH_FILE = re.compile(r"(^|[/\\])torch[/\\]")


def own_frame(frames: Sequence[tuple[str, str, str]]) -> str:
    """'model.py:15: code' for the first frame (file, line, code) in the uploader's own code
    (an op inside ``nn.Conv2d`` is reported where the model calls the layer), else the
    first. Only the text inside the archive is quoted: the paths are the uploader's and are
    never opened here."""
    if not frames:
        return "unknown location"
    file, line, code = next((f for f in frames if not _TORCH_FILE.search(f[0])), frames[0])
    where = f"{file[-120:]}:{line}"
    return f"{where}: {code.strip()[:160]}" if code.strip() else where
