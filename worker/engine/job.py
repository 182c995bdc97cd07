"""What every phase of a job shares: its spec and settings, its device, its clock, and the
progress/cancel callbacks. ``run_job`` (``pipeline.py``) makes one and hands it to each phase."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.jobs.error_codes import JobErrorCode
from core.jobs.report import Phase, Progress
from core.jobs.spec import JobSpec
from core.settings import Settings
from worker.engine.datasets import UploadedDataset
from worker.engine.errors import Cancelled, EngineError

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def resolve_device(requested: str, settings: Settings) -> torch.device:
    """spec.device ("auto" -> the worker's device; "auto" there -> CUDA when present)."""
    name = settings.worker_device if requested == "auto" else requested
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise EngineError(
                JobErrorCode.DEVICE_UNAVAILABLE,
                f"device {name!r} was asked for but this worker has {count} CUDA device(s); "
                'use "auto" or "cpu"',
            )
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return str(device)


class Clock:
    """Seconds per phase, accumulated (evaluation runs three times)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def phase(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)  # asynchronous kernels belong to this phase
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def add(self, timings: dict[str, float]) -> None:
        for name, seconds in timings.items():
            self.timings[name] = self.timings.get(name, 0.0) + seconds

    def done(self) -> dict[str, float]:
        return {**self.timings, "total": time.perf_counter() - self.start}


@dataclass
class Job:
    """One job's context: read by every phase, never a global."""

    spec: JobSpec
    settings: Settings
    output_dir: Path
    device: torch.device
    on_progress: ProgressFn | None = None
    should_cancel: CancelFn | None = None
    dataset: UploadedDataset | None = None  # the spec's data.dataset when it is an upload
    clock: Clock = field(default_factory=Clock)

    def enter(self, name: Phase) -> None:
        """Announce a phase (and stop here if the job was cancelled)."""
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled()
        if self.on_progress is not None:
            self.on_progress(Progress(phase=name))

    def timed(self, name: str, *, synced: bool = True) -> AbstractContextManager[None]:
        """Time a block under ``name`` (CUDA work included when ``synced``)."""
        return self.clock.phase(name, self.device if synced else None)

