"""Models both the tests and the benchmarks build."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN, added to the input: the add couples its channels."""

    def __init__(self, channels: int, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class ResidualNet(nn.Module):
    """Stem conv+BN, two residual blocks, linear head; (N, 1, 28, 28) -> (N, 10)."""

    def __init__(self, channels: int = 8, bias: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(channels)
        self.block1 = Block(channels, bias)
        self.block2 = Block(channels, bias)
        self.fc = nn.Linear(channels * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.stem(x))), 2)  # (N, C, 14, 14)
        x = self.block2(self.block1(x))
        x = F.avg_pool2d(x, 2)  # (N, C, 7, 7)
        return self.fc(x.view(x.size(0), -1))
