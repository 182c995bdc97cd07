"""A shared database without a shared pepper refuses to start: each host would make its own
pepper in its own data dir, and a key made on one host would answer 401 on every other. The
API, a worker and ``python -m service.keys`` each exit at once, saying what to set; none of
them opens a connection (the database address is a closed loopback port)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import ENV_PREFIX, Settings
from stack import processes as P

COMMANDS = {
    "api": [sys.executable, "-m", "uvicorn", "service.main:app", "--port", "1"],
    "worker": P.worker_args("w1@test", "prune"),
    "keys": [sys.executable, "-m", "service.keys", "create", "--tenant", "t",
             "--scopes", "jobs:read"],
}


def distributed_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update({"PRUNER_DATA_DIR": str(data_dir), "PRUNER_REDIS_URL": "redis://127.0.0.1:1/0",
                "PRUNER_DATABASE_URL": "postgresql://pruner@127.0.0.1:1/pruner", **extra})
    return env


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_shared_database_without_a_pepper_refuses_to_start(tmp_path: Path, name: str) -> None:
    done = subprocess.run(COMMANDS[name], env=distributed_env(tmp_path / "data"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "PRUNER_AUTH_PEPPER" in done.stdout + done.stderr
    assert not (tmp_path / "data" / "auth_pepper").exists()


def test_the_settings_refuse_and_accept_as_documented() -> None:
    with pytest.raises(ValueError, match="PRUNER_AUTH_PEPPER"):
        Settings.of(database_url="postgresql://h/db")
    assert Settings.of(database_url="postgresql://h/db", auth_pepper="s3cret").auth_pepper
    assert Settings.of(database_url="postgresql://h/db", auth="disabled").auth == "disabled"
    assert Settings.of().auth_pepper == ""  # one host: the data dir keeps a pepper
