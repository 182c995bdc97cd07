"""The pruning service's client: ``PrunerClient`` (Python) and the ``pruner`` command.

Installed with the base package (httpx and pydantic; no torch).
"""

from client.api import PrunerClient
from client.errors import ApiError, JobCancelled, JobEnded, JobFailed
from client.retry import RetryPolicy

__all__ = ["ApiError", "JobCancelled", "JobEnded", "JobFailed", "PrunerClient", "RetryPolicy"]
