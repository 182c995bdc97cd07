"""``Settings.as_env``: the one place a child process's environment is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings


def test_a_child_reads_back_exactly_these_settings(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=Path("relative/data"), worker_device="cpu", job_lease_s=7.5,
                        mnist_download=True, log_level="WARNING", max_attempts=5)
    env = settings.as_env({"PATH": "/bin", "PRUNER_QUEUE_NAME": "stale", "PRUNER_BOGUS": "x"})
    assert env["PATH"] == "/bin" and env["PYTHONUNBUFFERED"] == "1"
    assert "PRUNER_BOGUS" not in env  # nothing but these settings under the prefix
    assert env["PRUNER_DATA_DIR"] == str(Path("relative/data").resolve())
    expected = settings.model_copy(update={"data_dir": settings.data_dir.resolve(),
                                           "mnist_root": settings.mnist_root.resolve()})
    monkeypatch.chdir(tmp_path)  # the child runs elsewhere (a scratch dir)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child == expected
    assert child.queue_name == "prune"  # the parent's stale variable did not leak through


def test_of_ignores_this_processes_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNER_QUEUE_NAME", "from-the-shell")
    assert Settings().queue_name == "from-the-shell"
    built = Settings.of(max_attempts=4)
    assert (built.queue_name, built.max_attempts) == ("prune", 4)


def test_torchs_torchscript_escape_hatch_reaches_the_job_process() -> None:
    """docs/engine.md tells operators to set torch's TorchScript escape hatch in the worker's
    environment (pytorch#189705: read once when torch is imported, so it must be there when
    the job process starts); the job process's environment is built here, so it must pass."""
    name, value = "TORCH_2_14_ONLY_UNSAFE_SILENCE_TORCHSCRIPT_ERROR", "I promise to migrate by 2.15"
    env = Settings.of().as_env({"PATH": "/bin", name: value})
    assert env[name] == value
