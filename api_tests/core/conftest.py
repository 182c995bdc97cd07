"""Fixtures of the store tests: ``backend`` (one per entry of store_backends.BACKENDS) and
``store`` (a fresh, empty store of that backend, closed afterwards)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api_tests.core.store_backends import BACKENDS, Backend
from core.storage.protocols import JobStore


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](request, tmp_path)


@pytest.fixture()
def store(backend: Backend) -> Iterator[JobStore]:
    opened = backend.open()
    yield opened
    opened.close()
