"""Small models with the patterns shrink follows (and some it refuses), built in the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The residual CNN the benchmarks build too lives in testkit/; the tests find it here beside
# the others.
from testkit.models import ResidualNet as ResidualNet


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so slicing mistakes show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


class FixedView(nn.Module):
    """A hard-coded reshape size: `x.view(-1, 400)` cannot follow removed channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 5, stride=5)
        self.fc = nn.Linear(400, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x[:, :, :25, :25]))  # (N, 16, 5, 5)
        return self.fc(x.view(-1, 400))


class Concat(nn.Module):
    """A concatenation of two convs' channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(8 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.cat([self.a(x), self.b(x)], 1), 1))


class Sigmoid(nn.Module):
    """sigmoid(0) = 0.5: a removed channel would still feed the next layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.sigmoid(self.fc1(torch.flatten(x, 1))))


class SharedLayer(nn.Module):
    """One conv applied twice: its input and output channels couple both uses."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.shared = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 28 * 28, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.shared(F.relu(self.shared(F.relu(self.stem(x)))))))


class NoAffine(nn.Module):
    """BatchNorm without weight and bias maps a removed channel's 0 to -mean/std."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4, affine=False)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.bn(self.conv(x)), 1))


class Depthwise(nn.Module):
    """A depthwise conv (groups = channels) after conv1: removing one of conv1's channels
    would also remove a whole depthwise filter, a coupling the pass does not follow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.dw(F.relu(self.conv1(x)))), 1))


class Transposed(nn.Module):
    """A transposed conv keeps its input channels in weight dim 0, not dim 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(4 * 56 * 56, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.up(F.relu(self.conv1(x))), 1))


class Grouped(nn.Module):
    """A grouped conv (4 groups of 2 channels) after conv1: whole groups go together."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.fc = nn.Linear(8 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.grouped(F.relu(self.conv1(x)))), 1))


class Multiplier(nn.Module):
    """A depthwise conv with 2 filters per input channel: out != in, refused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.fc = nn.Linear(8 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.dw(F.relu(self.conv1(x))), 1))


class Excite(nn.Module):
    """Squeeze-and-excitation: the trunk times a sigmoid gate computed from its pooled
    channels; the gate's last conv and the trunk are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.squeeze = nn.Conv2d(8, 4, 1)
        self.excite = nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn(self.conv(x)))
        scale = torch.sigmoid(self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x * scale, 1), 1))


class DenseConcat(nn.Module):
    """DenseNet's pattern: BatchNorm over a growing concatenation, a list appended to."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(4)
        self.grow1 = nn.Conv2d(4, 2, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(6)
        self.grow2 = nn.Conv2d(6, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        features.append(self.grow1(F.relu(self.norm1(torch.cat(features, 1)))))
        features.append(self.grow2(F.relu(self.norm2(torch.cat(features, 1)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.cat(features, 1), 1), 1))


class BranchyDepthwise(nn.Module):
    """MobileNetV2's shape: a depthwise conv inside `if self.residual:`, a module attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.residual = True
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = x + self.dw(x) if self.residual else self.dw(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
