"""Engine errors: each carries a stable ``JobErrorCode`` that the job record shows."""

from __future__ import annotations

from typing import Any

from core.jobs.error_codes import JobErrorCode


class EngineError(Exception):
    """A job that cannot be done as asked; ``code`` is stable, ``message`` says what to do.

    ``report``: what the failed job still has to show (a partial report's JSON, e.g. a
    target's frontier on ``target_unreachable``), stored as the job's report; else None."""

    def __init__(self, code: JobErrorCode, message: str,
                 report: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.report = report


class Cancelled(Exception):
    """Raised inside the engine when ``should_cancel()`` turns true (checked every batch)."""
