"""The import graph of our packages: no cycles, and core/ imports neither torch, Celery nor
FastAPI (its package docstring promises it; the API and the job process both rely on it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "service", "worker", "stack", "client")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (anywhere in its body, lazily or not)."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "worker.celery_app" in graph["worker.tasks"]  # the graph does see our imports
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise AssertionError(f"import cycle: {exc.args[1]}") from None


def test_core_imports_no_torch_celery_or_fastapi() -> None:
    modules = sorted(m for m in import_graph() if m.startswith("core"))
    code = (
        f"import sys; import {', '.join(modules)}; "
        "bad = [m for m in ('torch', 'celery', 'fastapi') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_client_imports_no_torch_celery_or_fastapi() -> None:
    """``pruner`` runs from the base install on a laptop or a CI runner: httpx and pydantic."""
    code = ("import sys, client.cli; "
            "bad = [m for m in ('torch', 'celery', 'fastapi', 'starlette') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_core_is_packages_by_domain() -> None:
    """Only the settings and the broker contract sit at core/'s top; the rest is a package."""
    loose = sorted(p.name for p in (ROOT / "core").glob("*.py"))
    assert loose == ["__init__.py", "queue.py", "settings.py"]
    packages = sorted(p.parent.name for p in (ROOT / "core").glob("*/__init__.py"))
    assert packages == ["jobs", "storage", "tenants", "uploads", "webhooks"]
