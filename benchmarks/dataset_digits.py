"""A real non-MNIST dataset offline: scikit-learn's bundled handwritten digits (1,797 8 x 8
images, 10 classes), as a dataset file; a small CNN trained on it; a prune + fine-tune job on
it through the engine; the pruned model's accuracy recomputed on the file's test split.

How the digits become a dataset: pixels 0..16 scaled to [0, 1], upsampled to 28 x 28
(bilinear, ``torch.nn.functional.interpolate``) so the MNIST architectures take them, stored
as uint8 0..255; a seeded 20% (359) marked test, the rest train; the training split's mean and
std stored in the file.

    .venv/bin/python -m benchmarks.dataset_digits        # prints JSON
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from client.dataset_file import write_dataset
from core.datasets import check_dataset
from core.datasets.record import DatasetRecord
from core.jobs.spec import JobSpec
from core.settings import Settings
from core.storage.digest import sha256_file

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


def main() -> None:
    from worker.engine.datasets import UploadedDataset
    from worker.engine.pipeline import run_job

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="digits-"))
    path = write_digits(folder / "digits.safetensors")
    x_train, y_train = normalised(path, 0)
    x_test, y_test = normalised(path, 2)
    start = time.perf_counter()
    model = train(DigitsCNN(), x_train, y_train, epochs=15)
    train_s = time.perf_counter() - start
    dense = accuracy(model, x_test, y_test)
    scripted = torch.jit.script(model)
    scripted.save(str(folder / "cnn.pt"))
    record = DatasetRecord(id="ds-" + "0" * 32, tenant="local", created_at=datetime.now(UTC),
                           bytes=path.stat().st_size, sha256=sha256_file(path),
                           info=check_dataset(path, Settings()))
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg": [round(x, 1) for x in os.getloadavg()]},
        "dataset": record.info.model_dump(mode="json"), "train_epochs": 15,
        "train_s": round(train_s, 1), "dense_test_accuracy": round(dense, 4), "jobs": []}
    for amount in (0.5, 0.8, 0.9):
        spec = JobSpec.model_validate({
            "data": {"dataset": record.id}, "device": "cpu",
            "pruning": {"method": "l1_unstructured", "scope": "global", "amount": amount},
            "finetune": {"epochs": 3, "validation_size": 150}})
        out = folder / f"out-{amount}"
        result = run_job(folder / "cnn.pt", spec, out, settings=Settings(),
                         dataset=UploadedDataset(path, record))
        pruned = torch.jit.load(str(result.outputs[result.primary]))
        acc = result.report.accuracy
        results["jobs"].append({
            "amount": amount, "before": round(acc.before.accuracy, 4),
            "after_pruning": round(acc.after_pruning.accuracy, 4),
            "after_finetune": round(acc.after_finetune.accuracy, 4),
            "figures_from": acc.after_finetune.split,
            "recomputed_from_download": round(accuracy(pruned, x_test, y_test), 4),
            "targeted_sparsity": round(result.report.targeted.sparsity, 4),
            "seconds": round(result.report.timings_s["total"], 1)})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
