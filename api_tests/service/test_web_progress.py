"""Progress as the pages show it (the live page's script mirrors these rules)."""

from __future__ import annotations

from core.jobs.record import JobStatus
from core.jobs.report import Progress
from service.web.pages import progress_fraction, progress_text


class ScheduleProgress(Progress):
    """Progress with the schedule/search fields the sparsity branch adds to core.jobs.report."""

    round: int | None = None
    rounds: int | None = None
    trial: int | None = None
    trials: int | None = None
    sparsity: float | None = None
    tensor: str | None = None


def test_fine_tuning_progress() -> None:
    p = Progress(phase="finetuning", epoch=2, epochs=4, step=250, steps=1000, loss=0.25)
    assert progress_text(p) == "finetuning · epoch 2/4 · step 250/1000 · loss 0.2500"
    assert progress_fraction(JobStatus.RUNNING, p) == 0.3125  # (1 + 0.25) / 4
    assert progress_fraction(JobStatus.RUNNING, Progress(phase="evaluating")) is None
    assert progress_fraction(JobStatus.QUEUED, Progress(phase="queued")) == 0.0
    assert progress_fraction(JobStatus.SUCCEEDED, None) == 1.0
    assert progress_text(None) == ""


def test_rounds_and_trials_share_the_bar() -> None:
    p = ScheduleProgress(phase="finetuning", epoch=1, epochs=1, step=5, steps=10, round=3,
                         rounds=4, sparsity=0.5)
    assert progress_text(p) == ("finetuning · round 3/4 · sparsity 50.0% · epoch 1/1 · "
                                "step 5/10")
    assert progress_fraction(JobStatus.RUNNING, p) == 0.625  # (2 + 0.5) / 4
    trial = ScheduleProgress(phase="evaluating", trial=2, trials=5, tensor="fc1.weight")
    assert progress_text(trial) == "evaluating · trial 2/5 · fc1.weight"
    assert progress_fraction(JobStatus.RUNNING, trial) == 0.2  # one of five trials done
