"""The built-in architectures a state_dict/safetensors upload is loaded into.

Each module's ``state_dict`` matches ``core/architectures.py`` key for key and shape for
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

    def __init__(self, hidden1: int = 256, hidden2: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, hidden1)
        self.fc2 = nn.Linear(hidden1, hidden2)
        self.fc3 = nn.Linear(hidden2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)  # (N, 784)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


class LeNet300100(MnistMLP):
    """LeNet-300-100."""

    def __init__(self) -> None:
        super().__init__(300, 100)


class LeNet5(nn.Module):
    """LeNet-5 with padding 2 on conv1, so 28x28 inputs keep the classic 32x32 geometry."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28)  # flattened (N, 784) input works too
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, 6, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 16, 5, 5)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


class SmallCNNBN(nn.Module):
    """Two 3x3 conv blocks with BatchNorm, then one Linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)  # (N, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # (N, 64, 7, 7)
        out: torch.Tensor = self.fc(torch.flatten(x, 1))
        return out


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "mnist_mlp": MnistMLP,
    "lenet_300_100": LeNet300100,
    "lenet5": LeNet5,
    "small_cnn_bn": SmallCNNBN,
}


def build(name: str) -> nn.Module:
    """A freshly initialised module of architecture ``name`` (KeyError when unknown)."""
    return BUILDERS[name]()
