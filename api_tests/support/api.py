"""The app in-process (FastAPI's TestClient) against a real redis-server, no worker: what
the service tests drive (the fixtures in api_tests/service/conftest.py build it per test)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from fastapi.testclient import TestClient

from core.settings import Settings
from core.storage.backends import open_blob_store, open_job_store
from core.storage.protocols import BlobStore, JobStore, StoreUnavailable
from core.tenants.tenancy import ensure_local_admin
from service.main import create_app

REFERENCE = {
    "architecture": "mnist_mlp",
    "pruning": {"method": "l1_unstructured", "scope": "global", "amount": 0.3},
    "finetune": {"epochs": 2},
}


@dataclass
class ModelFiles:
    """Small but real upload files (the ``model_files`` fixture makes them once)."""

    state_dict: Path
    safetensors: Path
    not_a_model: Path
    evil_zip: Path


def make_settings(tmp_path: Path, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "redis_url": redis_url,
        "queue_name": f"test-{uuid.uuid4().hex[:8]}",
        **overrides,
    }
    return Settings(**values)


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
