"""Limits for the job process that opens an upload. (Owner: the hostile-uploads work, issue 4.)

PLACEHOLDER: no limits yet; issue 4 fills these in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.settings import Settings


def preexec_limits(settings: Settings) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen`` that applies the job process's limits."""

    def apply() -> None:
        return None

    return apply


def scratch_dir(base: Path, job_id: str) -> Path:
    """The job process's working directory."""
    path = base / "scratch" / job_id
    path.mkdir(parents=True, exist_ok=True)
    return path
