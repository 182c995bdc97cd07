"""Engine errors: each carries a stable ``JobErrorCode`` that the job record shows."""

from __future__ import annotations

from core.jobs.error_codes import JobErrorCode


class EngineError(Exception):
    """A job that cannot be done as asked; ``code`` is stable, ``message`` says what to do."""

    def __init__(self, code: JobErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Cancelled(Exception):
    """Raised inside the engine when ``should_cancel()`` turns true (checked every batch)."""
