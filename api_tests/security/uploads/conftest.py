from __future__ import annotations

from pathlib import Path

import pytest

from api_tests.security import hostile as h
from core.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return h.make_canary(tmp_path)
