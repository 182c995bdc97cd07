"""The operators a ``.pt2`` program's nodes may call, as ``torch.export`` serialises them
(``torch.ops.aten.<op>.<overload>``, ``_operator.<name>``).

Derived by exporting the registry models (mnist_mlp, lenet_300_100, lenet5, small_cnn_bn) and
a BatchNorm + residual CNN with dropout and adaptive pooling, in eval and train mode, with and
without ``run_decompositions()`` (core ATen), and listing their node targets
(api_tests/security/uploads/test_pt2_ops.py exports them again and checks every target is
here, so the list cannot drift from what our own models use). Added by hand: close relatives
that are equally pure tensor math (other activations, pooling, reductions, shape ops).

Deliberately absent: every namespace but ``aten`` (custom ops, ``torch.ops.higher_order``:
``cond``, ``while_loop``, ``invoke_subgraph``... which carry subgraphs, torchbind and effect
tokens), and any ATen op that touches files, memory or process state (``aten::from_file``,
``aten::save``, ``aten::set_``, ``aten::as_strided``, ``aten::empty``, random seeding).
"""

from __future__ import annotations

from typing import Final

# Seen in our own exports (training IR and core ATen).
SEEN_IN_OUR_EXPORTS: Final = frozenset({
    "_native_batch_norm_legit_functional", "_native_batch_norm_legit_no_training",
    "adaptive_avg_pool2d", "add", "add_", "addmm", "batch_norm", "conv2d", "convolution",
    "dropout", "flatten", "linear", "max_pool2d", "max_pool2d_with_indices", "mean",
    "native_dropout", "permute", "relu", "reshape", "sym_size", "view",
})  # fmt: skip
# Close relatives, pure tensor math.
_RELATIVES: Final = frozenset({
    # layers
    "conv1d", "conv3d", "conv_transpose1d", "conv_transpose2d", "layer_norm",
    "native_layer_norm", "group_norm", "native_group_norm", "matmul", "mm", "bmm", "t",
    "_native_batch_norm_legit", "embedding", "feature_dropout",
    # pooling
    "max_pool1d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_max_pool2d",
    "_adaptive_avg_pool2d",
    # activations
    "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "elu", "selu", "gelu", "silu",
    "mish", "sigmoid", "tanh", "softplus", "hardswish", "hardsigmoid", "log_softmax",
    "softmax", "_log_softmax", "_softmax", "clamp", "clamp_min", "clamp_max",
    # elementwise and reductions
    "sub", "mul", "div", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "pow", "where",
    "sum", "amax", "amin", "max", "min", "argmax", "var_mean",
    # shapes
    "unsqueeze", "squeeze", "cat", "stack", "expand", "transpose", "contiguous", "clone",
    "select", "slice", "split", "chunk", "unbind", "_unsafe_view", "alias", "detach",
    "sym_numel", "sym_stride",
})  # fmt: skip
ALLOWED_ATEN_OPS: Final = SEEN_IN_OUR_EXPORTS | _RELATIVES

# Python operators export uses on sizes (symbolic batch arithmetic) and tuple outputs.
ALLOWED_OPERATORS: Final = frozenset({
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "eq", "ne", "lt",
    "le", "gt", "ge",
})  # fmt: skip
