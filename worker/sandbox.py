"""Limits for the job process that opens an upload.

The supervisor (worker/supervisor.py) starts ``python -m worker.job_process`` with
``preexec_fn=preexec_limits(...)`` (composed with its own session/parent-death setup), in
``scratch_dir(...)``, and classifies how it ended with ``classify_exit``. This module never
imports torch: the worker's main process must not.

Limits (settings / environment variables):

- memory: ``RLIMIT_DATA`` = ``job_memory_limit_bytes`` (PRUNER_JOB_MEMORY_LIMIT_BYTES). Not
  ``RLIMIT_AS`` alone: address space counts what threads and malloc arenas *reserve*, so torch
  failed to even start under a 3 GiB RLIMIT_AS while it used 0.8 GiB of data. On CPU-only
  workers ``RLIMIT_AS`` is set too, at ``AS_FACTOR`` x the limit, as a backstop for shared
  file mappings that RLIMIT_DATA does not count; on CUDA-capable workers it is left off,
  because the CUDA driver reserves tens of GiB of address space.
- CPU time: ``RLIMIT_CPU`` = ``job_cpu_time_limit_s`` (SIGXCPU, then SIGKILL ``CPU_GRACE_S``
  later);
- files: ``RLIMIT_FSIZE`` (no file written larger than an upload could justify),
  ``RLIMIT_NOFILE`` = ``MAX_OPEN_FILES``, ``RLIMIT_CORE`` = 0 (no core dumps of model memory);
- user: ``job_user`` (PRUNER_JOB_USER): when the worker runs as root, the job process drops to
  this user (and its primary group, no supplementary groups).
"""

from __future__ import annotations

import errno
import os
import pwd
import resource
import signal
from collections.abc import Callable
from pathlib import Path

from core.jobs.error_codes import JobErrorCode
from core.settings import MiB, Settings

AS_FACTOR = 4
CPU_GRACE_S = 5
MAX_OPEN_FILES = 1024
# Outputs (TorchScript / state_dict / safetensors of the model) are at most about as large as
# the largest upload we accept, plus TorchScript's code and the report.
FSIZE_MARGIN_BYTES = 256 * MiB
# Where the kernel counts OOM kills of the cgroup the worker runs in (cgroup v2).
CGROUP_MEMORY_EVENTS = Path("/sys/fs/cgroup/memory.events")


def may_use_cuda(settings: Settings) -> bool:
    """Whether the job process may initialise CUDA (decided without importing torch)."""
    if settings.worker_device.startswith("cuda"):
        return True
    return settings.worker_device == "auto" and Path("/dev/nvidiactl").exists()


def file_size_limit(settings: Settings) -> int:
    return max(settings.max_uncompressed_bytes, settings.max_upload_bytes) + FSIZE_MARGIN_BYTES


def resource_limits(settings: Settings) -> dict[int, tuple[int, int]]:
    """The rlimits the job process gets: resource -> (soft, hard)."""
    memory = settings.job_memory_limit_bytes
    cpu = settings.job_cpu_time_limit_s
    fsize = file_size_limit(settings)
    limits = {
        resource.RLIMIT_DATA: (memory, memory),
        resource.RLIMIT_CPU: (cpu, cpu + CPU_GRACE_S),
        resource.RLIMIT_FSIZE: (fsize, fsize),
        resource.RLIMIT_NOFILE: (MAX_OPEN_FILES, MAX_OPEN_FILES),
        resource.RLIMIT_CORE: (0, 0),
    }
    if not may_use_cuda(settings):
        limits[resource.RLIMIT_AS] = (AS_FACTOR * memory, AS_FACTOR * memory)
    return limits


def job_identity(settings: Settings) -> tuple[int, int] | None:
    """(uid, gid) the job process switches to, or None (no job_user, or not root).
    Raises ValueError in the parent, not in the child, when the user does not exist."""
    if not settings.job_user or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(settings.job_user)
    except KeyError:
        raise ValueError(f"job_user {settings.job_user!r} does not exist") from None
    if entry.pw_uid == 0:
        raise ValueError(f"job_user {settings.job_user!r} is root; name an unprivileged user")
    return entry.pw_uid, entry.pw_gid


def preexec_limits(settings: Settings) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen`` that applies the job process's limits and
    drops to ``job_user``. Everything that can fail on bad settings is computed here, in the
    parent; the returned function only makes system calls. (The caller starts the new
    session: ``os.setsid()`` fails when called twice.)"""
    limits = resource_limits(settings)
    identity = job_identity(settings)

    def apply() -> None:
        for which, (soft, hard) in limits.items():
            current_hard = resource.getrlimit(which)[1]
            if current_hard != resource.RLIM_INFINITY:  # cannot raise a hard limit
                soft, hard = min(soft, current_hard), min(hard, current_hard)
            resource.setrlimit(which, (soft, hard))
        if identity is not None:
            uid, gid = identity
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

    return apply


def scratch_dir(base: Path, job_id: str, settings: Settings | None = None) -> Path:
    """The job process's working directory; owned by ``job_user`` when the job process will
    switch to it (pass ``settings``), so that the job can write its outputs there."""
    path = base / "scratch" / job_id
    path.mkdir(parents=True, exist_ok=True)
    identity = job_identity(settings) if settings is not None else None
    if identity is not None:
        os.chown(path, *identity)
        path.chmod(0o700)
    return path


def classify_exit(returncode: int, timed_out: bool, oom_killed: bool = False) -> JobErrorCode:
    """How a job process that recorded no outcome ended, as a JobErrorCode:

    - past its wall-clock limit (the supervisor killed it) -> ``timeout``;
    - SIGXCPU (RLIMIT_CPU) or SIGXFSZ (RLIMIT_FSIZE) -> ``resource_limit``;
    - SIGKILL while the kernel counted an OOM kill (``oom_killed``, see ``oom_kills``) ->
      ``resource_limit``;
    - any other signal or exit (segfault, abort, a SIGKILL from outside) -> ``crashed``,
      which the supervisor may retry up to ``max_attempts``.
    """
    if timed_out:
        return JobErrorCode.TIMEOUT
    if returncode in (-signal.SIGXCPU, -signal.SIGXFSZ):
        return JobErrorCode.RESOURCE_LIMIT
    if returncode == -signal.SIGKILL and oom_killed:
        return JobErrorCode.RESOURCE_LIMIT
    return JobErrorCode.CRASHED


def oom_kills() -> int | None:
    """The cgroup's OOM-kill count (cgroup v2), or None where it cannot be read. Read it before
    and after a job process: a rise with a SIGKILL exit means the job was killed for memory."""
    try:
        for line in CGROUP_MEMORY_EVENTS.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


_MEMORY_MESSAGES = ("can't allocate memory", "out of memory", "cannot allocate memory")


def is_resource_limit_error(exc: BaseException) -> bool:
    """Whether an exception raised in the job process means it hit its limits: Python's
    MemoryError, torch.OutOfMemoryError, torch's CPU allocator failing under RLIMIT_DATA (a
    RuntimeError "DefaultCPUAllocator: can't allocate memory"), or a write past RLIMIT_FSIZE
    (Python ignores SIGXFSZ, so the write fails with EFBIG instead). The job process should
    fail such a job ``resource_limit``."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _MEMORY_MESSAGES)
