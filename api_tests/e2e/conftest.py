"""Fixtures of the end-to-end tests: ``dist``, a module's own stack on PostgreSQL + S3 as on
several hosts (the API and two workers, each with a data_dir of its own: nothing shared but
PostgreSQL, SeaweedFS's S3 and Redis). test_distributed_e2e.py uses it, and test_chaos.py
runs its every-backend tests on it too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api_tests.support.stacks import TEST_SETTINGS, mnist_root
from stack.local import Stack, local_stack


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory, postgres_server: Any,
         s3_server: Any) -> Iterator[Stack]:
    values = {**TEST_SETTINGS, "mnist_root": mnist_root(),
              "database_url": postgres_server.url(), **s3_server.settings()}
    root = tmp_path_factory.mktemp("dist")
    with local_stack(root, values, workers=2, own_data_dirs=True) as stack:
        yield stack
