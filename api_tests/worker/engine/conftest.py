"""Engine fixtures: settings on the real MNIST root, and the reference MLP trained once.

The MLP is the model class users write by hand (``fc1``/``fc2``/``fc3``, flattening with
``view``), trained 3 epochs with Adam (lr 1e-3, batch 64) through the engine's own fast
training loop, then saved both as TorchScript and as a state_dict, as users do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.settings import Settings
from core.spec import FinetuneSpec, InputSpec
from worker.engine import data, training


class UserMLP(nn.Module):
    """The 784-256-128-10 MLP exactly as the reference script writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 784)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


@dataclass(frozen=True)
class RecipeMLP:
    torchscript: Path
    state_dict: Path
    model: UserMLP


def mnist_root() -> Path:
    return Path(os.environ.get("PRUNER_MNIST_ROOT", "../shared/datasets")).resolve()


@pytest.fixture(scope="session")
def engine_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        mnist_root=mnist_root(), data_dir=tmp_path_factory.mktemp("engine-data"),
        worker_device="cpu",
    )


@pytest.fixture(scope="session")
def recipe_mlp(engine_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> RecipeMLP:
    torch.manual_seed(0)
    model = UserMLP()
    train = data.load_split(engine_settings.mnist_root, True, torch.device("cpu"), InputSpec())
    training.finetune(
        model, train, FinetuneSpec(epochs=3), training.MaskHold([], []), seed=0
    )
    model.eval()
    folder = tmp_path_factory.mktemp("recipe-mlp")
    torch.save(model.state_dict(), folder / "mlp_state_dict.pt")
    torch.jit.save(torch.jit.script(model), str(folder / "mlp_torchscript.pt"))
    return RecipeMLP(folder / "mlp_torchscript.pt", folder / "mlp_state_dict.pt", model)
