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


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's ShuffleNetV2 shuffle, sizes read from the tensor."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, channels, height, width)


class Shuffle(nn.Module):
    """Two convs concatenated, then shuffled with ``groups`` (2: one slot per conv; 4: each
    conv's channels in two slots), read by a conv."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(1, 8, 3, padding=1)
        self.c = nn.Conv2d(16, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channel_shuffle(torch.cat((F.relu(self.a(x)), F.relu(self.b(x))), 1), self.groups)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.c(x)), 1), 1))


class SplitShuffle(nn.Module):
    """ShuffleNetV2's stride-1 unit twice: chunk, a branch on one half, concatenation with
    the other half, shuffle; then flatten into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, stride=4, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(16)
        self.branch1 = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8),
                                     nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8))
        self.branch2 = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8),
                                     nn.ReLU())
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.stem(x)))  # (N, 16, 7, 7)
        x1, x2 = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat((x1, self.branch1(x2)), 1), 2)
        x1, x2 = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat((x1, self.branch2(x2)), 1), 2)
        return self.fc(x.flatten(1))


class FixedShuffle(nn.Module):
    """A shuffle with its channel counts written as numbers (as a traced ``x.data.size()``
    leaves them); shrink makes them follow the channels (``rewrite.generic_shuffles``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        x = x.view(x.size(0), 2, 4, 28, 28).transpose(1, 2).contiguous()
        x = x.view(x.size(0), 8, 28, 28)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def fixed_shuffle(x: torch.Tensor) -> torch.Tensor:
    x = x.view(x.size(0), 2, 4, 28, 28).transpose(1, 2).contiguous()
    return x.view(x.size(0), 8, 28, 28)


class FixedShuffleFunction(FixedShuffle):
    """The same in a free function: scripted, its graph is not the module's to edit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fixed_shuffle(F.relu(self.conv(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class UnevenChunk(nn.Module):
    """Eight channels cut into three pieces (3, 3, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, _, _ = F.relu(self.conv(x)).chunk(3, dim=1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(first, 1), 1))


class ForeignSize(nn.Module):
    """A shuffle of a's channels whose sizes are read from b's output: after shrinking, b's
    count need not be a's."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = F.relu(self.a(x)), F.relu(self.b(x))
        n, c, h, w = b.size()
        a = a.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.cat((a, b), 1), 1), 1))


class InferredShuffle(nn.Module):
    """The shuffle spelled with -1 for the channels, the spatial sizes read from the tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        n, _, h, w = x.size()
        x = x.view(n, 2, -1, h, w).transpose(1, 2).contiguous()
        x = x.view(n, -1, x.size(3), x.size(4))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InferredShuffleFixedSpatial(InferredShuffle):
    """The same with the spatial sizes written as numbers: the -1 could take part of them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        x = x.view(x.size(0), 2, -1, 14, 56).transpose(1, 2).contiguous()
        x = x.view(x.size(0), -1, 14, 56)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SplitSizes(nn.Module):
    """``torch.split`` with explicit sizes along channels (not a chunk: the pieces' sizes are
    constants that shrink does not rewrite), so shrink refuses it naming the op and line."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(F.relu(self.conv(x)), [6, 2], dim=1)
        x = torch.cat([self.a(p), q], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
