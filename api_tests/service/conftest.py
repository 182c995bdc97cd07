"""API tests: the app in-process (TestClient) against a real redis-server, no worker.

A session fixture starts one redis-server (stack.processes, the same code `python -m stack`
uses); each test gets its own data dir and queue name, so queue lengths and job lists are
the test's own. Model files are small but real (torch.save / safetensors), made once. The
``Api`` handle and ``running_api`` (for a test's own settings) are in api_tests/support/api.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api_tests.support.api import Api, ModelFiles, make_settings, running_api
from core.settings import Settings
from stack import processes as P


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with P.running_redis(tmp_path_factory.mktemp("api-redis")) as proc:
        yield proc.meta["url"]


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    import zipfile

    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("uploads")
    weights = {"fc.weight": torch.randn(10, 20), "fc.bias": torch.zeros(10)}
    torch.save(weights, folder / "sd.pt")
    save_file(weights, str(folder / "w.safetensors"))
    (folder / "notes.txt").write_bytes(b"just some text, certainly not a model\n" * 10)
    with zipfile.ZipFile(folder / "evil.zip", "w") as z:
        z.writestr("../../etc/cron.d/evil", b"* * * * * root true\n")
    return ModelFiles(folder / "sd.pt", folder / "w.safetensors", folder / "notes.txt",
                      folder / "evil.zip")


@pytest.fixture()
def settings(tmp_path: Path, redis_url: str) -> Settings:
    return make_settings(tmp_path, redis_url)


@pytest.fixture()
def api(settings: Settings) -> Iterator[Api]:
    with running_api(settings) as running:
        yield running
