"""Show a job's progress: a bar redrawn in place on a terminal, plain lines elsewhere."""

from __future__ import annotations

from typing import TextIO

from core.jobs.public import JobPublic

BAR_WIDTH = 24
# Where each phase starts on the bar; fine-tuning fills the space up to "saving".
PHASE_START = {"queued": 0.0, "loading": 0.02, "evaluating": 0.05, "pruning": 0.08,
               "finetuning": 0.1, "quantizing": 0.9, "saving": 0.95, "deploying": 0.97,
               "done": 1.0}


def fraction(job: JobPublic) -> float:
    """How far the job is, in [0, 1] (an estimate: fine-tuning steps dominate)."""
    if job.status.terminal:
        return 1.0
    progress = job.progress
    if progress is None:
        return 0.0
    start = PHASE_START.get(progress.phase, 0.0)
    if progress.phase != "finetuning" or not (progress.epochs and progress.steps):
        return start
    done = (progress.epoch or 1) - 1 + (progress.step or 0) / progress.steps
    return start + (PHASE_START["saving"] - start) * min(1.0, done / progress.epochs)


def describe(job: JobPublic) -> str:
    """One line: status, phase, epoch and step, loss."""
    parts = [job.status.value]
    progress = job.progress
    if progress is not None and not job.status.terminal:
        parts.append(progress.phase)
        if progress.epoch is not None and progress.epochs:
            parts.append(f"epoch {progress.epoch}/{progress.epochs}")
        if progress.step is not None and progress.steps:
            parts.append(f"step {progress.step}/{progress.steps}")
        if progress.loss is not None:
            parts.append(f"loss {progress.loss:.4f}")
    if job.cancel_requested and not job.status.terminal:
        parts.append("(cancel requested)")
    if job.error is not None:
        parts.append(f"{job.error.code.value}: {job.error.message}")
    return " ".join(parts)


class ProgressView:
    """Feed it each job update. On a terminal: one line with a bar, redrawn; elsewhere
    (a log, a pipe): a line whenever the status, phase or epoch changes."""

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.shown = 0.0  # the bar never goes back (evaluating comes twice)
        self.last_key: tuple[object, ...] | None = None

    def update(self, job: JobPublic) -> None:
        if self.tty:
            self.shown = max(self.shown, fraction(job))
            filled = round(self.shown * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {self.shown:4.0%} {describe(job)}\x1b[K")
            if job.status.terminal:
                self.stream.write("\n")
            self.stream.flush()
            return
        progress = job.progress
        key = (job.status, job.cancel_requested, progress.phase if progress else None,
               progress.epoch if progress else None)
        if key != self.last_key:
            self.last_key = key
            print(f"{job.id}: {describe(job)}", file=self.stream, flush=True)
