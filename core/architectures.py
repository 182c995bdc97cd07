"""The architecture registry as plain data: names, descriptions, state_dict keys and shapes.

The API serves this table (``GET /v1/architectures``) without importing torch; the engine
builds the real modules in ``worker/engine/registry.py``, and a test checks that both agree
key for key and shape for shape.
"""

from __future__ import annotations

from pydantic import BaseModel


class TensorInfo(BaseModel):
    name: str
    shape: list[int]
    prunable: bool  # a default pruning target (weight of a Linear or Conv layer)


class ArchitectureInfo(BaseModel):
    name: str
    description: str
    input_shape: list[int]  # per sample, before the spec's `flatten`
    tensors: list[TensorInfo]  # every state_dict entry, in state_dict order


def _linear(name: str, fan_in: int, fan_out: int) -> list[TensorInfo]:
    return [
        TensorInfo(name=f"{name}.weight", shape=[fan_out, fan_in], prunable=True),
        TensorInfo(name=f"{name}.bias", shape=[fan_out], prunable=False),
    ]


def _conv(name: str, c_in: int, c_out: int, k: int) -> list[TensorInfo]:
    return [
        TensorInfo(name=f"{name}.weight", shape=[c_out, c_in, k, k], prunable=True),
        TensorInfo(name=f"{name}.bias", shape=[c_out], prunable=False),
    ]


def _batchnorm(name: str, channels: int) -> list[TensorInfo]:
    return [
        TensorInfo(name=f"{name}.weight", shape=[channels], prunable=False),
        TensorInfo(name=f"{name}.bias", shape=[channels], prunable=False),
        TensorInfo(name=f"{name}.running_mean", shape=[channels], prunable=False),
        TensorInfo(name=f"{name}.running_var", shape=[channels], prunable=False),
        TensorInfo(name=f"{name}.num_batches_tracked", shape=[], prunable=False),
    ]


ARCHITECTURES: dict[str, ArchitectureInfo] = {
    a.name: a
    for a in [
        ArchitectureInfo(
            name="mnist_mlp",
            description="784-256-128-10 MLP with ReLU (fc1, fc2, fc3); returns logits. "
            "Flattens its input, so (N, 1, 28, 28) and (N, 784) both work.",
            input_shape=[1, 28, 28],
            tensors=_linear("fc1", 784, 256) + _linear("fc2", 256, 128) + _linear("fc3", 128, 10),
        ),
        ArchitectureInfo(
            name="lenet_300_100",
            description="LeNet-300-100: 784-300-100-10 MLP with ReLU (fc1, fc2, fc3); logits.",
            input_shape=[1, 28, 28],
            tensors=_linear("fc1", 784, 300) + _linear("fc2", 300, 100) + _linear("fc3", 100, 10),
        ),
        ArchitectureInfo(
            name="lenet5",
            description="LeNet-5: conv1 (1->6, 5x5, pad 2), max-pool, conv2 (6->16, 5x5), "
            "max-pool, fc1 400-120, fc2 120-84, fc3 84-10, ReLU; logits.",
            input_shape=[1, 28, 28],
            tensors=_conv("conv1", 1, 6, 5)
            + _conv("conv2", 6, 16, 5)
            + _linear("fc1", 400, 120)
            + _linear("fc2", 120, 84)
            + _linear("fc3", 84, 10),
        ),
        ArchitectureInfo(
            name="small_cnn_bn",
            description="conv1 (1->32, 3x3, pad 1) + bn1 + ReLU + max-pool, conv2 (32->64, "
            "3x3, pad 1) + bn2 + ReLU + max-pool, fc (3136-10); logits.",
            input_shape=[1, 28, 28],
            tensors=_conv("conv1", 1, 32, 3)
            + _batchnorm("bn1", 32)
            + _conv("conv2", 32, 64, 3)
            + _batchnorm("bn2", 64)
            + _linear("fc", 64 * 7 * 7, 10),
        ),
    ]
}
