"""The import graph of our packages: no cycles; core/ imports neither torch, Celery nor
FastAPI (its package docstring promises it; the API and the job process both rely on it),
the API and the Celery worker no torch, the client none of them; tests import no conftest,
and benchmarks nothing from the tests."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

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


# What each side may not import: core/ is shared by the API and the job process; the API and
# the Celery worker process (which only hands jobs to job processes) run without torch; the
# client (``pruner``) runs from the base install on a laptop or a CI runner.
WITHOUT = {
    "core": ("torch", "celery", "fastapi"),
    "service.main": ("torch", "torchvision", "numpy"),
    "worker.celery_app": ("torch", "torchvision"),
    "worker.tasks": ("torch", "torchvision"),
    "client.cli": ("torch", "celery", "fastapi", "starlette"),
}


@pytest.mark.parametrize("side", sorted(WITHOUT))
def test_a_side_imports_without_what_it_must_not_need(side: str) -> None:
    modules = sorted(m for m in import_graph() if m == side or m.startswith(side + "."))
    assert side in modules  # the side exists under this name
    code = (
        f"import sys; import {', '.join(modules)}; "
        f"bad = [m for m in {WITHOUT[side]!r} if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_core_is_packages_by_domain() -> None:
    """Only the settings and the broker contract sit at core/'s top; the rest is a package."""
    loose = sorted(p.name for p in (ROOT / "core").glob("*.py"))
    assert loose == ["__init__.py", "queue.py", "settings.py"]
    packages = sorted(p.parent.name for p in (ROOT / "core").glob("*/__init__.py"))
    assert packages == ["datasets", "jobs", "storage", "tenants", "uploads", "webhooks"]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against its package."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


def offending(folder: str, forbidden: Callable[[str], bool]) -> list[str]:
    return sorted(f"{path.relative_to(ROOT)}: {module}"
                  for path in (ROOT / folder).rglob("*.py")
                  for module in imported_modules(path) if forbidden(module))


def _is_conftest(module: str) -> bool:
    return "conftest" in module.split(".")


def test_no_test_module_imports_from_a_conftest() -> None:
    """Helpers live in api_tests/support/; a conftest holds fixtures, which pytest hands out."""
    assert _is_conftest("api_tests.service.conftest.Api")  # the check can see one
    assert offending("api_tests", _is_conftest) == []


def _is_test_module(module: str) -> bool:
    return any(part.startswith("test_") for part in module.split("."))


def test_no_test_module_imports_from_another_test_module() -> None:
    """A test module stands on its own: what two of them share is a helper module
    (api_tests/support/, or a factories/files module beside the tests), never a test file."""
    assert _is_test_module("api_tests.e2e.test_jobs_e2e._download")  # the check can see one
    assert not _is_test_module("api_tests.support.downloads")
    assert offending("api_tests", _is_test_module) == []


def test_benchmarks_and_testkit_import_nothing_from_the_tests() -> None:
    """What benchmarks and tests share lives in testkit/ (or the product)."""
    def from_tests(module: str) -> bool:
        return module.split(".")[0] == "api_tests"

    assert from_tests("api_tests.support.stacks")
    assert offending("benchmarks", from_tests) + offending("testkit", from_tests) == []


def _calls_torch_jit_script(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.jit.script":
            return True
    return False


def test_modules_are_scripted_through_the_guard() -> None:
    """Every nn.Module is scripted by worker.engine.scripting.script, which first drops the
    builtin-table ids a freed op left at its attributes' addresses (a CI run failed on one);
    only that module and its own test call torch.jit.script."""
    guard = ROOT / "worker/engine/scripting.py"
    allowed = {guard, ROOT / "api_tests/worker/engine/test_scripting.py"}
    assert _calls_torch_jit_script(guard)  # the check can see one
    folders = (*PACKAGES, "api_tests", "testkit", "benchmarks")
    callers = sorted(str(p.relative_to(ROOT)) for folder in folders
                     for p in (ROOT / folder).rglob("*.py")
                     if p not in allowed and _calls_torch_jit_script(p))
    assert callers == []
