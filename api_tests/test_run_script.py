"""The README's two commands (``./run``, ``./run test``) and what .ci/run runs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def check_install() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_install",
                                                  ROOT / "scripts" / "check_install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pyproject(path: Path, dependencies: list[str], scripts: dict[str, str],
              version: str = "0.1.0") -> Path:
    lines = ["[project]", 'name = "pruning-service"', f'version = "{version}"',
             "dependencies = [" + ", ".join(f'"{d}"' for d in dependencies) + "]",
             "[project.optional-dependencies]", 'worker = ["pydantic>=2"]', "dev = []",
             "[project.scripts]",
             *(f'{name} = "{target}"' for name, target in scripts.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_install_names_what_is_missing(tmp_path: Path) -> None:
    missing = check_install().missing
    bin_dir = Path(sys.prefix) / "bin"
    satisfied = pyproject(tmp_path / "a.toml", ["httpx>=0.1", "celery[redis]>=5"],
                          {"prune-model": "worker.engine.cli:main"})
    assert missing(["worker", "dev"], satisfied, bin_dir) == []
    unmet = pyproject(tmp_path / "b.toml", ["httpx>=999", "no-such-dist-xyz"],
                      {"prune-model": "x:y", "no-such-command": "x:y"})
    found = missing([], unmet, bin_dir)
    assert found[0] == "the no-such-command command"
    assert found[1].startswith("httpx>=999 (installed: ")
    assert found[2:] == ["no-such-dist-xyz"]
    other = pyproject(tmp_path / "c.toml", [], {}, version="9.9")
    assert missing([], other, bin_dir) == ["pruning-service 9.9"]


def fake_venv(path: Path) -> None:
    """A .venv whose python is this one, except that ``python -m pip`` fails loudly: the test
    must never install anything into the real environment."""
    python = path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"""#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "pip was called" >&2; exit 99; fi
exec {sys.executable} "$@"
""")
    python.chmod(0o755)


def test_run_setup_is_quick_and_silent_when_everything_is_there(tmp_path: Path) -> None:
    """In a checkout whose venv has everything: no pip, no apt, nothing said."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "run", tmp_path / "run")
    shutil.copy(ROOT / "scripts" / "check_install.py", tmp_path / "scripts")
    pyproject(tmp_path / "pyproject.toml", ["httpx>=0.1"], {"prune-model": "x:y"})
    fake_venv(tmp_path)
    redis_dir = Path(shutil.which("redis-server") or "/usr/bin/redis-server").parent
    env = {**os.environ, "PATH": f"{redis_dir}:{os.environ['PATH']}"}
    start = time.monotonic()
    done = subprocess.run(["./run", "setup"], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert time.monotonic() - start < 10
    wrong = subprocess.run(["./run", "serve"], cwd=tmp_path, capture_output=True, text=True,
                           env=env, timeout=60)
    assert wrong.returncode == 2 and "usage: ./run" in wrong.stderr
    # The control: with a requirement missing, ./run does call pip (here: the fake one).
    pyproject(tmp_path / "pyproject.toml", ["no-such-dist-xyz"], {})
    needs = subprocess.run(["./run", "setup"], cwd=tmp_path, capture_output=True, text=True,
                           env=env, timeout=60)
    assert needs.returncode == 99 and "pip was called" in needs.stderr


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip().split("  #")[0].strip() for line in quick.splitlines()
                if line.startswith("    ./run")]
    assert commands == ["./run", "./run test"]
    test_command = README.split("## Test\n", 1)[1].strip().splitlines()[0].strip()
    assert test_command == "PRUNER_MNIST_ROOT=../shared/datasets ./run test"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_command
