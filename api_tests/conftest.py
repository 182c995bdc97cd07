"""Shared fixtures: the real service as processes, and plain helpers to drive it.

Fixtures (reuse them; their shape is stable):

- ``stack`` (session): a ``Stack`` running a real redis-server, uvicorn (``service.main:app``)
  and one Celery worker (solo pool), on free ports, with a temporary data dir. Attributes:
  ``base_url``, ``client`` (an ``httpx.Client`` on base_url), ``settings`` (the ``Settings``
  the children run with), ``env`` (their environment), ``redis`` / ``api`` / ``worker``
  (``stack.processes.Proc``: ``.pid``, ``.alive()``, ``.log_tail()``), and helpers
  ``restart_api()``, ``restart_worker()``, ``restart_redis()``, ``job_processes()`` (pids of
  the worker's live job processes). Tests that kill or restart processes must NOT use this
  shared one: they call ``support.stacks.start_stack(tmp_path, **setting_overrides)`` (a
  context manager yielding their own ``Stack``).
- ``trained_mlp`` (session): a ``TrainedMLP`` with ``torchscript`` and ``state_dict`` paths of
  the reference 784-256-128-10 MLP (``api_tests.models.UserMLP``: ``fc1``, ``fc2``, ``fc3``)
  trained one epoch on MNIST by a plain PyTorch loop, once per session: the suite's only
  trained model. Tests using it are marked ``slow`` or ``e2e``.
- ``mnist_test`` (session): the normalised MNIST test split as tensors ``(images, labels)``.
- ``postgres_server`` / ``s3_server`` (session): a real PostgreSQL / SeaweedFS S3 server in a
  temp dir (``testkit.servers``); skipped with the reason where it cannot start, an error
  instead under ``PRUNER_REQUIRE_SERVERS=1`` (``.ci/run``; ``support/servers.py``).

Helpers are plain functions in ``api_tests/support/`` (tests import them from there, never
from a conftest): ``stacks.submit(client, model_path, spec, headers=None)`` -> response;
``stacks.wait_for(client, job_id, statuses=terminal, timeout)`` -> the job JSON;
``stacks.wait_running(stack, job_id, phase="finetuning")`` -> the job JSON once it runs that
phase; ``problems.assert_problem(response, status, code)`` -> the problem+json body (every
test that checks an error response uses it). ``api_tests.models.accuracy(model,
mnist_test)``; ``api_tests.core.factories.make_record(...)`` builds every job record a test
writes itself.

A test using ``stack`` must be marked ``e2e``, one using ``trained_mlp`` or ``mnist_test``
``slow`` (or ``e2e``): collection refuses it otherwise, so ``-m "not e2e and not slow"`` is
the fast inner loop.

Settings for tests (``support.stacks.TEST_SETTINGS``): short leases and janitor interval
(seconds), PRUNER_MNIST_ROOT from the environment or ../shared/datasets, device cpu.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from api_tests.support.servers import server_missing
from api_tests.support.stacks import TrainedMLP, mnist_root, start_stack
from stack.local import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def trained_mlp(tmp_path_factory: pytest.TempPathFactory) -> TrainedMLP:
    """The suite's one trained model (about 20 s of CPU): every test that uploads or prunes a
    trained MLP uses it, so a session trains it once."""
    import torch

    from api_tests.models import train_user_mlp
    from worker.engine import scripting

    model = train_user_mlp(mnist_root())
    folder = tmp_path_factory.mktemp("models")
    scripted, state = folder / "mlp.torchscript.pt", folder / "mlp.state_dict.pt"
    torch.jit.save(scripting.script(model), str(scripted))
    torch.save(model.state_dict(), state)
    return TrainedMLP(torchscript=scripted, state_dict=state)


@pytest.fixture(scope="session")
def mnist_test() -> Any:
    """The normalised MNIST test split, ``(images, labels)``: for ``models.accuracy``."""
    from api_tests.models import load_mnist

    return load_mnist(mnist_root(), train=False)


# --- markers: the fast inner loop (-m "not e2e and not slow") must really be fast -------------

NEEDS_MARKER = {"stack": "e2e", "trained_mlp": "slow", "mnist_test": "slow"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test that uses a costly fixture without the marker that keeps it out of the
    inner loop (``e2e`` also counts for the training fixtures: it is never in the loop)."""
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        for fixture, marker in NEEDS_MARKER.items():
            if fixture in getattr(item, "fixturenames", ()) and not {marker, "e2e"} & marks:
                raise pytest.UsageError(
                    f"{item.nodeid} uses the {fixture!r} fixture: mark it "
                    f"@pytest.mark.{marker}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    from testkit.servers import PostgresServer

    try:
        server = PostgresServer()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        server_missing("PostgreSQL", exc)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    from testkit.servers import SeaweedServer

    try:
        server = SeaweedServer()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        server_missing("S3 server (SeaweedFS)", exc)
    yield server
    server.stop()
