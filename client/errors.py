"""What the client raises: an HTTP problem (``ApiError``), or a job that did not succeed."""

from __future__ import annotations

import httpx

from core.jobs.public import JobPublic


class ApiError(Exception):
    """The API answered with an error: its status and the problem+json ``code``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if not isinstance(problem, dict):
            return cls(response.status_code, "http_error", response.text[:200] or
                       response.reason_phrase)
        detail = str(problem.get("detail") or problem.get("title") or "")
        return cls(response.status_code, str(problem.get("code", "http_error")), detail)


class JobEnded(Exception):
    """The job ended without succeeding; ``job`` is how it ended."""

    def __init__(self, job: JobPublic, message: str) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobEnded):
    def __init__(self, job: JobPublic) -> None:
        error = job.error
        self.code = error.code.value if error else "unknown"
        super().__init__(job, f"job {job.id} failed: {self.code}: "
                         f"{error.message if error else 'no error recorded'}")


class JobCancelled(JobEnded):
    def __init__(self, job: JobPublic) -> None:
        super().__init__(job, f"job {job.id} was cancelled")
