"""What the HTML pages show about jobs: progress as text and fraction, report summaries.

The live page's script (``static/job.js``) computes the same text and fraction from each
server-sent event; keep the two in step.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader

from core.jobs.record import JobRecord, JobStatus
from core.jobs.report import Progress
from core.storage.protocols import REPORT, BlobStore
from report_html import ReportView, environment, read_report_json

TEMPLATES: Environment = environment(PackageLoader("service.web", "templates"))

# Pages and the standalone report: nothing loads from elsewhere; only our own script runs.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'")
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"
HTML_HEADERS = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin"}


# Progress fields of schedules, search and sensitivity (added to core.jobs.report.Progress by the
# sparsity branch); read with getattr so that this works before and after they exist.
_COUNTERS = (("round", "rounds"), ("trial", "trials"))


def _extra(progress: Progress, name: str) -> Any:
    return getattr(progress, name, None)


def progress_text(progress: Progress | None) -> str:
    if progress is None:
        return ""
    parts: list[str] = [progress.phase]
    for one, of in _COUNTERS:
        if _extra(progress, one) is not None and _extra(progress, of):
            parts.append(f"{one} {_extra(progress, one)}/{_extra(progress, of)}")
    if (tensor := _extra(progress, "tensor")) is not None:
        parts.append(str(tensor))
    if (sparsity := _extra(progress, "sparsity")) is not None:
        parts.append(f"sparsity {sparsity * 100:.1f}%")
    if progress.epoch is not None and progress.epochs:
        parts.append(f"epoch {progress.epoch}/{progress.epochs}")
    if progress.step is not None and progress.steps:
        parts.append(f"step {progress.step}/{progress.steps}")
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4f}")
    return " · ".join(parts)


def progress_fraction(status: JobStatus, progress: Progress | None) -> float | None:
    """0..1 through the job, or None when unknown (the page shows a busy bar).

    Fine-tuning steps are nearly all of a plain job's time, so its fraction is the
    fine-tuning's; rounds (iterative schedules) and trials (search) each take an equal
    share, the steps counting within the current one."""
    if status is JobStatus.SUCCEEDED or (progress is not None and progress.phase == "done"):
        return 1.0
    if progress is None or progress.phase == "queued":
        return 0.0
    p = progress
    within: float | None = None
    if p.phase == "finetuning" and p.epoch and p.epochs and p.step is not None and p.steps:
        within = ((p.epoch - 1) + p.step / p.steps) / p.epochs
    for one, of in _COUNTERS:
        done, total = _extra(p, one), _extra(p, of)
        if done and total:
            within = ((done - 1) + (within or 0.0)) / total
    return None if within is None else round(within, 4)


@dataclass(frozen=True)
class ReportSummary:
    sparsity: float | None  # over the targeted tensors
    accuracy_before: float | None
    accuracy_after: float | None  # after fine-tuning


_SUMMARIES: OrderedDict[str, ReportSummary] = OrderedDict()
_SUMMARIES_KEPT = 2048  # a finished job's report never changes: cache its summary
_SUMMARIES_LOCK = threading.Lock()  # pages render in the thread pool


def load_report(blobs: BlobStore, job_id: str) -> ReportView | None:
    """The stored report, or None when it is gone (retention) or was never written."""
    try:
        with blobs.open(job_id, REPORT) as f:
            return read_report_json(f.read())
    except OSError:
        return None


def report_summary(blobs: BlobStore, record: JobRecord) -> ReportSummary | None:
    if record.status is not JobStatus.SUCCEEDED or record.files_expired_at is not None:
        return None
    with _SUMMARIES_LOCK:
        if (cached := _SUMMARIES.get(record.id)) is not None:
            _SUMMARIES.move_to_end(record.id)
            return cached
    view = load_report(blobs, record.id)
    if view is None:
        return None
    acc = view.accuracy
    summary = ReportSummary(
        sparsity=view.targeted.sparsity if view.targeted else None,
        accuracy_before=acc.before.accuracy if acc else None,
        accuracy_after=acc.after_finetune.accuracy if acc else None,
    )
    with _SUMMARIES_LOCK:
        _SUMMARIES[record.id] = summary
        if len(_SUMMARIES) > _SUMMARIES_KEPT:
            _SUMMARIES.popitem(last=False)
    return summary


def example_spec() -> str:
    from core.jobs.public import SPEC_EXAMPLES

    return json.dumps(SPEC_EXAMPLES["reference"]["value"], indent=2)
