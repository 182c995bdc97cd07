"""run_job: the engine's one entry point for the Celery task, the CLI and the tests.

It reads as the job's table of contents: each phase is one call that returns one result
object (``phases.py`` holds the phases, ``strategies.py`` the three ways of pruning). A new
capability adds one phase line here, not a branch. No globals: settings come in as an argument
(or ``get_settings()``), the spec is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.jobs.formats import ModelFormat
from core.jobs.report import Progress, Report
from core.jobs.spec import JobSpec
from core.settings import Settings, get_settings
from worker.engine import phases, strategies
from worker.engine.datasets import UploadedDataset
from worker.engine.job import CancelFn, Job, ProgressFn, resolve_device


@dataclass
class RunResult:
    report: Report
    outputs: dict[ModelFormat, Path]  # file written in output_dir, one per format available
    primary: ModelFormat  # the format the spec's output_format resolves to ("same" -> the input's)


def run_job(
    model_path: Path,
    spec: JobSpec,
    output_dir: Path,
    *,
    settings: Settings | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    dataset: UploadedDataset | None = None,
) -> RunResult:
    """Prune the model in ``model_path`` as ``spec`` says; files go to ``output_dir``.
    ``dataset``: the local file and record of the spec's uploaded ``data.dataset``.

    Raises EngineError (a documented JobErrorCode) or Cancelled."""
    settings = settings or get_settings()
    job = Job(spec, settings, output_dir, resolve_device(spec.device, settings),
              on_progress, should_cancel, dataset)
    job.enter("loading")
    upload = phases.load(job, model_path)  # the model, its targets; refuses before any work
    splits = phases.load_data(job, upload)  # test, train, validation, which images each is
    dense = phases.measure_dense(job, upload, splits)  # cost and accuracy before; the teacher
    scan = phases.scan_sensitivity(job, upload, splits)  # per-tensor curves, when asked
    pruned = strategies.prune(job, upload, splits, dense, scan)  # shrink, search or schedule
    tuned = phases.evaluate_final(job, dense, pruned, splits)  # accuracy after fine-tuning
    tuned = phases.quantize(job, pruned, splits, tuned)  # trained quantisation, when asked
    pruned = strategies.settle(job, pruned, splits, tuned)  # a compressed target, as quantised
    costs = phases.measure_cost(job, dense, pruned)  # cost after (speedup timed in alternation)
    saved = phases.save(job, upload, pruned)  # the output files
    saved = phases.deploy_models(job, pruned, splits, saved)  # ONNX, int8: when asked
    report = phases.report(job, upload, splits, dense, scan, pruned, tuned, costs, saved)
    if on_progress is not None:
        on_progress(Progress(phase="done"))
    return RunResult(report=report, outputs=saved.outputs, primary=saved.primary)
