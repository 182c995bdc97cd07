"""scikit-learn's bundled handwritten digits as a dataset file, and a small CNN for them:
shared by the digits benchmark and the datasets e2e test.

How the digits become a dataset: pixels 0..16 scaled to [0, 1], upsampled to 28 x 28
(bilinear, ``torch.nn.functional.interpolate``) so the MNIST architectures take them, stored
as uint8 0..255; a seeded 20% (359) marked test, the rest train; the training split's mean and
std stored in the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from client.dataset_file import write_dataset

SIZE = 28
TEST_FRACTION = 0.2


def digits_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (x * 255).round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    n = len(images)
    splits = np.zeros(n, dtype=np.uint8)
    splits[np.random.default_rng(seed).permutation(n)[:round(n * TEST_FRACTION)]] = 2
    train = images[splits == 0].astype(np.float32) / 255
    return {"images": images, "labels": digits.target.astype(np.int64), "splits": splits,
            "mean": np.array([train.mean()], np.float32),
            "std": np.array([train.std()], np.float32)}


def write_digits(path: Path, seed: int = 0) -> Path:
    a = digits_arrays(seed)
    return write_dataset(path, a["images"], a["labels"], splits=a["splits"],
                         class_names=[str(d) for d in range(10)],
                         mean=a["mean"].tolist(), std=a["std"].tolist())


def normalised(path: Path, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The file's ``split`` as a user would feed it: (N, 1, 28, 28) floats, the file's
    mean/std; read with safetensors, independent of the engine."""
    from safetensors.numpy import load_file

    a = load_file(str(path))
    keep = a["splits"] == split
    x = torch.from_numpy(a["images"][keep]).float().div(255).unsqueeze(1)
    x = (x - float(a["mean"][0])) / float(a["std"][0])
    return x, torch.from_numpy(a["labels"][keep])


class DigitsCNN(nn.Module):
    """A small CNN for 1 x 28 x 28 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int,
          seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(labels)).split(64):
            optimiser.zero_grad()
            F.cross_entropy(model(images[index]), labels[index]).backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model.eval()(images).argmax(1) == labels).float().mean())
