"""API tests: the app in-process (TestClient) against a real redis-server, no worker.

A session fixture starts one redis-server (stack.processes, the same code `python -m stack`
uses); each test gets its own data dir and queue name, so queue lengths and job lists are
the test's own. Model files are small but real (torch.save / safetensors), made once.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from core.settings import Settings
from core.storage.backends import open_blob_store, open_job_store
from core.storage.protocols import BlobStore, JobStore, StoreUnavailable
from core.tenants.tenancy import ensure_local_admin
from service.main import create_app
from stack import processes as P

REFERENCE = {
    "architecture": "mnist_mlp",
    "pruning": {"method": "l1_unstructured", "scope": "global", "amount": 0.3},
    "finetune": {"epochs": 2},
}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with P.running_redis(tmp_path_factory.mktemp("api-redis")) as proc:
        yield proc.meta["url"]


@dataclass
class ModelFiles:
    state_dict: Path
    safetensors: Path
    not_a_model: Path
    evil_zip: Path


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


def make_settings(tmp_path: Path, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "redis_url": redis_url,
        "queue_name": f"test-{uuid.uuid4().hex[:8]}",
        **overrides,
    }
    return Settings(**values)


@pytest.fixture()
def settings(tmp_path: Path, redis_url: str) -> Settings:
    return make_settings(tmp_path, redis_url)


@dataclass
class Api:
    """A running app (TestClient) with direct handles on its store, blobs and Redis."""

    client: TestClient
    settings: Settings
    store: JobStore
    blobs: BlobStore
    redis: redis.Redis
    key: str = ""

    def submit(self, model: Path, spec: Any = REFERENCE, headers: dict[str, str] | None = None,
               ) -> Any:
        body = spec if isinstance(spec, str) else json.dumps(spec)
        with model.open("rb") as f:
            return self.client.post("/v1/jobs", files={"model": (model.name, f)},
                                    data={"spec": body}, headers=headers)

    def queued_job_ids(self) -> list[str]:
        """Job ids of the task messages waiting in this test's queue (oldest first)."""
        ids = []
        for raw in reversed(self.redis.lrange(self.settings.queue_name, 0, -1)):
            message = json.loads(raw)
            args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            assert message["headers"]["task"] == "worker.tasks.prune_job"
            assert kwargs == {} and len(args) == 1
            ids.append(args[0])
        return ids


@contextmanager
def running_api(settings: Settings) -> Iterator[Api]:
    """The app with a client that sends the ``local`` tenant's admin key (made as
    ``python -m stack`` makes it); ``api.key`` is that key."""
    store = open_job_store(settings)
    try:
        key, _ = ensure_local_admin(settings, store)
    except StoreUnavailable:  # a test of a database that is down: any well-formed key
        key = "prn_live_000000000000_" + "A" * 43
    with TestClient(create_app(settings), raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {key}"}) as client:
        yield Api(client, settings, store, open_blob_store(settings),
                  redis.Redis.from_url(settings.redis_url), key)


@pytest.fixture()
def api(settings: Settings) -> Iterator[Api]:
    with running_api(settings) as running:
        yield running
