"""The built-in architectures a state_dict/safetensors upload is loaded into.

Each module's ``state_dict`` matches ``core/jobs/architectures.py`` key for key and shape for
shape (a test checks it), so the API can serve the table without importing torch.
Parameter names follow the plain scripts users write (``self.fc1 = nn.Linear(784, 256)``),
so their state_dicts load as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class MnistMLP(nn.Module):
    """784-256-128-10 with ReLU; accepts (N, 1, 28, 28) or (N, 784)."""

    def __init__(self, fc1: int = 256, fc2: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, fc1)
        self.fc2 = nn.Linear(fc1, fc2)
        self.fc3 = nn.Linear(fc2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)  # (N, 784)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


class LeNet300100(MnistMLP):
    """LeNet-300-100."""

    def __init__(self, fc1: int = 300, fc2: int = 100) -> None:
        super().__init__(fc1, fc2)


class LeNet5(nn.Module):
    """LeNet-5 with padding 2 on conv1, so 28x28 inputs keep the classic 32x32 geometry."""

    def __init__(self, conv1: int = 6, conv2: int = 16, fc1: int = 120, fc2: int = 84) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, conv1, 5, padding=2)
        self.conv2 = nn.Conv2d(conv1, conv2, 5)
        self.fc1 = nn.Linear(conv2 * 5 * 5, fc1)
        self.fc2 = nn.Linear(fc1, fc2)
        self.fc3 = nn.Linear(fc2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28)  # flattened (N, 784) input works too
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, conv1, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, conv2, 5, 5)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


class SmallCNNBN(nn.Module):
    """Two 3x3 conv blocks with BatchNorm, then one Linear layer."""

    def __init__(self, conv1: int = 32, conv2: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, conv1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(conv1)
        self.conv2 = nn.Conv2d(conv1, conv2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(conv2)
        self.fc = nn.Linear(conv2 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)  # (N, conv1, 14, 14)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # (N, conv2, 7, 7)
        out: torch.Tensor = self.fc(torch.flatten(x, 1))
        return out


# Each builder takes its hidden widths as keyword arguments named after the layer whose
# output they size (``LeNet5(conv1=3, conv2=8)``), as core/jobs/architectures.py documents.
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mnist_mlp": MnistMLP,
    "lenet_300_100": LeNet300100,
    "lenet5": LeNet5,
    "small_cnn_bn": SmallCNNBN,
}


def build(name: str, widths: dict[str, int] | None = None) -> nn.Module:
    """A freshly initialised module of architecture ``name`` (KeyError when unknown), with
    ``widths`` (layer name -> output channels/features) replacing the defaults."""
    return BUILDERS[name](**(widths or {}))
