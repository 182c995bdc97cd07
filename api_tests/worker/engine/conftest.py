"""Engine fixtures: settings on the real MNIST root. The trained reference MLP is the suite's
one ``trained_mlp`` (api_tests/conftest.py)."""

from __future__ import annotations

import pytest

from api_tests.support.stacks import mnist_root
from core.settings import Settings


@pytest.fixture(scope="session")
def engine_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        mnist_root=mnist_root(), data_dir=tmp_path_factory.mktemp("engine-data"),
        worker_device="cpu",
    )
