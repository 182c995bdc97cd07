"""The architecture registry as plain data: names, descriptions, state_dict keys and shapes.

The API serves this table (``GET /v1/architectures``) without importing torch; the engine
builds the real modules in ``worker/engine/registry.py``, and a test checks that both agree
key for key and shape for shape.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel


class TensorInfo(BaseModel):
    name: str
    shape: list[int]
    prunable: bool  # a default pruning target (weight of a Linear or Conv layer)


WIDTHS_HELP = (
    "Hidden widths, keyword arguments of the module's constructor named after the layer whose "
    "output channels/features they set (e.g. LeNet5(conv1=3, conv2=8, fc1=60)). A shrink job's "
    "report gives them as report.shrink.widths: build the module with them and load the "
    "safetensors (strict) to rebuild the shrunk model."
)


class ArchitectureInfo(BaseModel):
    name: str
    description: str
    input_shape: list[int]  # per sample, before the spec's `flatten`
    tensors: list[TensorInfo]  # every state_dict entry, in state_dict order, default widths
    widths: dict[str, int] = {}  # layer -> default output channels/features (see widths_help)
    widths_help: str = WIDTHS_HELP


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


def _mlp(w: dict[str, int]) -> list[TensorInfo]:
    return _linear("fc1", 784, w["fc1"]) + _linear("fc2", w["fc1"], w["fc2"]) + _linear(
        "fc3", w["fc2"], 10)


def _lenet5(w: dict[str, int]) -> list[TensorInfo]:
    return (_conv("conv1", 1, w["conv1"], 5) + _conv("conv2", w["conv1"], w["conv2"], 5)
            + _linear("fc1", w["conv2"] * 5 * 5, w["fc1"]) + _linear("fc2", w["fc1"], w["fc2"])
            + _linear("fc3", w["fc2"], 10))


def _small_cnn_bn(w: dict[str, int]) -> list[TensorInfo]:
    return (_conv("conv1", 1, w["conv1"], 3) + _batchnorm("bn1", w["conv1"])
            + _conv("conv2", w["conv1"], w["conv2"], 3) + _batchnorm("bn2", w["conv2"])
            + _linear("fc", w["conv2"] * 7 * 7, 10))


# name -> (description, default widths, state_dict table for given widths)
_TABLES: dict[str, tuple[str, dict[str, int], Callable[[dict[str, int]], list[TensorInfo]]]] = {
    "mnist_mlp": (
        "784-256-128-10 MLP with ReLU (fc1, fc2, fc3); returns logits. "
        "Flattens its input, so (N, 1, 28, 28) and (N, 784) both work.",
        {"fc1": 256, "fc2": 128}, _mlp),
    "lenet_300_100": (
        "LeNet-300-100: 784-300-100-10 MLP with ReLU (fc1, fc2, fc3); logits.",
        {"fc1": 300, "fc2": 100}, _mlp),
    "lenet5": (
        "LeNet-5: conv1 (1->6, 5x5, pad 2), max-pool, conv2 (6->16, 5x5), "
        "max-pool, fc1 400-120, fc2 120-84, fc3 84-10, ReLU; logits.",
        {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}, _lenet5),
    "small_cnn_bn": (
        "conv1 (1->32, 3x3, pad 1) + bn1 + ReLU + max-pool, conv2 (32->64, "
        "3x3, pad 1) + bn2 + ReLU + max-pool, fc (3136-10); logits.",
        {"conv1": 32, "conv2": 64}, _small_cnn_bn),
}


def state_dict_table(name: str, widths: dict[str, int] | None = None) -> list[TensorInfo]:
    """Every state_dict entry of architecture ``name`` built with ``widths`` (defaults for
    the layers not given). KeyError for an unknown name or width."""
    _, defaults, table = _TABLES[name]
    unknown = set(widths or {}) - set(defaults)
    if unknown:
        raise KeyError(f"unknown widths for {name}: {sorted(unknown)}")
    return table({**defaults, **(widths or {})})


ARCHITECTURES: dict[str, ArchitectureInfo] = {
    name: ArchitectureInfo(name=name, description=description, input_shape=[1, 28, 28],
                           tensors=table(defaults), widths=defaults)
    for name, (description, defaults, table) in _TABLES.items()
}
