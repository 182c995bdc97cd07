"""run_job: load, check, evaluate, prune, fine-tune with the masks held, evaluate, save, report.

This is the engine's one entry point for the Celery task, the CLI and the tests. It reads no
globals: settings come in as an argument (or ``get_settings()``), the spec is plain data.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from core.jobs.cost import Cost
from core.jobs.error_codes import JobErrorCode
from core.jobs.formats import SAME_FORMAT, ModelFormat
from core.jobs.report import Accuracy, Evaluation, Phase, Progress, Report, ValidationAccuracy
from core.jobs.spec import JobSpec, OutputFormat, PruningSpec, SensitivitySpec
from core.settings import Settings, get_settings
from worker.engine import data, measure, pruning, saving, sensitivity, shrink, training
from worker.engine.data import Split
from worker.engine.errors import Cancelled, EngineError
from worker.engine.loading import LoadedModel, load_model
from worker.engine.schedules import ScheduleRun
from worker.engine.search import Searcher

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


@dataclass
class RunResult:
    report: Report
    outputs: dict[ModelFormat, Path]  # file written in output_dir, one per format available
    primary: ModelFormat  # the format the spec's output_format resolves to ("same" -> the input's)


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


class _Clock:
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


def run_job(
    model_path: Path,
    spec: JobSpec,
    output_dir: Path,
    *,
    settings: Settings | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> RunResult:
    """Prune the model in ``model_path`` as ``spec`` says; files go to ``output_dir``.

    Raises EngineError (a documented JobErrorCode) or Cancelled."""
    settings = settings or get_settings()
    clock = _Clock()

    def phase(name: Phase) -> None:
        if should_cancel is not None and should_cancel():
            raise Cancelled()
        if on_progress is not None:
            on_progress(Progress(phase=name))

    phase("loading")
    device = resolve_device(spec.device, settings)
    torch.manual_seed(spec.seed)  # the model's own randomness (dropout), for determinism
    with clock.phase("load"):
        loaded = load_model(model_path, spec.architecture, settings)
        model = loaded.module.to(device)
        applied_pruning = pruning.effective_spec(spec.pruning)
        shrinking = (shrink.prepare(model, applied_pruning, spec.architecture, spec.seed)
                     if applied_pruning.shrink else None)  # refuses before any work
    with clock.phase("data", device):
        test, train, validation = _mnist(spec, settings, device)
        training.check_io_contract(model, test, spec.input)
    with clock.phase("cost", device):
        cost_before = _cost(model, spec, device, _primary_format(spec.output_format, loaded),
                            saved=None, scratch=output_dir)

    phase("evaluating")
    with clock.phase("evaluate", device):
        before = training.evaluate(model, test, should_cancel)
        val_before = _evaluate_validation(model, validation, should_cancel)
    if spec.finetune.distill is not None and train is not None:
        with clock.phase("teacher", device):  # the dense model's soft targets, once
            train = train.with_teacher(training.teacher_targets(
                model, train, spec.finetune.distill, should_cancel))

    targets = _targets(model, applied_pruning)
    scan = None
    if validation is not None and (spec.analysis and spec.analysis.sensitivity or (
            spec.search and spec.search.per_layer)):
        phase("sensitivity")
        with clock.phase("sensitivity", device):
            scan = sensitivity.scan(
                targets, applied_pruning, _scan_amounts(spec), model, validation,
                seed=spec.seed, on_progress=on_progress, should_cancel=should_cancel)

    phase("pruning")
    shrunk = None
    dense_twin = None
    if shrinking is not None:  # channels removed: a smaller dense model, nothing to hold
        dense_twin = copy.deepcopy(model)  # the speedup is timed against it at the end
        with clock.phase("prune", device):
            shrunk = shrinking.apply()
        model, targets = shrunk.model, []
    evaluations: list[Evaluation] = []

    def after_first_prune() -> None:
        phase("evaluating")
        with clock.phase("evaluate", device):
            evaluations.append(training.evaluate(model, test, should_cancel))

    searched = None
    if spec.search is not None and validation is not None and val_before is not None:
        with clock.phase("search", device):
            searched = Searcher(
                model, targets, applied_pruning, spec.finetune, spec.search, train,
                validation, test, spec.seed, val_before, scan, on_progress, should_cancel,
            ).run()
        # per_layer: the per-tensor amounts are in report.search (the trial), not the spec
        applied_pruning = searched.spec.model_copy(update={"overrides": spec.pruning.overrides})
        after_pruning = searched.after_pruning
    else:
        run = ScheduleRun(model, targets, applied_pruning, spec.finetune, train, spec.seed,
                          on_progress, should_cancel, after_first_prune)
        run.run()
        clock.add(run.timings)
        after_pruning = evaluations[0]

    phase("evaluating")
    with clock.phase("evaluate", device):
        after_finetune = training.evaluate(model, test, should_cancel) if train is not None \
            else after_pruning
        val_after = _evaluate_validation(model, validation, should_cancel)

    tensor_rows = (shrunk.rows if shrunk is not None
                   else pruning.tensor_reports(targets, applied_pruning))
    all_totals = pruning.parameter_totals(model)
    with clock.phase("cost", device):
        cost_after = _cost(model, spec, device, ModelFormat.STATE_DICT, saved={})  # bytes: saved
        if dense_twin is not None:
            cost_before, cost_after = _paired_latency(dense_twin, model, cost_before,
                                                      cost_after, spec, device)
            del dense_twin
    phase("saving")
    primary = _primary_format(spec.output_format, loaded)
    with clock.phase("save"):
        outputs = saving.save_all(model, primary, output_dir)
        input_info = saving.file_info(model_path, loaded.format)
        output_info = saving.file_info(outputs[primary], primary)

    report = Report(
        spec=spec.model_copy(update={"pruning": applied_pruning}),
        tensors=tensor_rows,
        targeted=pruning.totals([(r.elements, r.zeros) for r in tensor_rows]),
        all_parameters=all_totals,
        accuracy=_accuracy(before, after_pruning, after_finetune, val_before, val_after,
                           validation),
        timings_s=clock.done(),
        device=device_name(device),
        torch_version=torch.__version__,
        seed=spec.seed,
        input=input_info,
        output=output_info,
        cost=measure.report(cost_before, cost_after.model_copy(
            update={"bytes": measure.file_bytes(outputs)})),
        sensitivity=scan if spec.analysis and spec.analysis.sensitivity else None,
        search=searched.report if searched is not None else None,
        shrink=shrunk.report if shrunk is not None else None,
    )
    if on_progress is not None:
        on_progress(Progress(phase="done"))
    return RunResult(report=report, outputs=dict(outputs), primary=primary)


def _mnist(
    spec: JobSpec, settings: Settings, device: torch.device
) -> tuple[Split, Split | None, Split | None]:
    """The test split; the train split when there is fine-tuning to do (less the validation
    images when ``finetune.validation_size`` > 0); the validation split, or None."""
    def split(train: bool) -> Split:
        return data.load_split(settings.mnist_root, train, device, spec.input,
                               download=settings.mnist_download)

    test = split(False)
    needs_validation = spec.analysis is not None or spec.search is not None
    if spec.finetune.epochs == 0 and not needs_validation:
        return test, None, None
    train = split(True)
    validation = None
    if spec.finetune.validation_size > 0:
        train, validation = data.hold_out(train, spec.finetune.validation_size, spec.seed)
    return test, train if spec.finetune.epochs > 0 else None, validation


def _evaluate_validation(
    model: torch.nn.Module, validation: Split | None, should_cancel: CancelFn | None
) -> Evaluation | None:
    if validation is None:
        return None
    return training.evaluate(model, validation, should_cancel).model_copy(
        update={"split": "validation"})


def _scan_amounts(spec: JobSpec) -> list[float]:
    if spec.analysis is not None and spec.analysis.sensitivity is not None:
        return spec.analysis.sensitivity.amounts
    return SensitivitySpec().amounts


def _targets(model: torch.nn.Module, spec: PruningSpec) -> list[pruning.Target]:
    targets = pruning.find_targets(model, spec)
    if not targets:
        names = [n for n, _ in model.named_parameters()]
        raise EngineError(
            JobErrorCode.NO_PRUNABLE_TENSORS,
            "no parameter is targeted: by default the weights of Linear and Conv layers, "
            "narrowed by include/exclude. The model's parameters: "
            + (", ".join(names[:50]) + (" ..." if len(names) > 50 else "") or "none"),
        )
    return targets


def _cost(
    model: torch.nn.Module, spec: JobSpec, device: torch.device, primary: ModelFormat,
    saved: dict[str, int] | None, scratch: Path | None = None,
) -> Cost:
    """The model's cost now; ``saved=None``: measure its bytes by writing it under
    ``scratch`` (the job's output folder: a killed job leaves nothing elsewhere)."""
    if saved is None:
        saved = measure.bytes_as_saved(
            model, lambda m, folder: saving.save_all(m, primary, folder), device, scratch
        )
    return measure.measure(model, spec.input, device, device_name(device), saved)


def _paired_latency(
    dense: torch.nn.Module, shrunk: torch.nn.Module, before: Cost, after: Cost, spec: JobSpec,
    device: torch.device,
) -> tuple[Cost, Cost]:
    """``before`` and ``after`` with latencies re-timed in alternation."""
    dense_ms, shrunk_ms = measure.measure_latencies([dense, shrunk], spec.input, device)
    method = measure.paired_method(device)
    return (before.model_copy(update={"latency_ms": dense_ms, "latency_method": method}),
            after.model_copy(update={"latency_ms": shrunk_ms, "latency_method": method}))


def _primary_format(requested: OutputFormat, loaded: LoadedModel) -> ModelFormat:
    return loaded.format if requested == SAME_FORMAT else ModelFormat(requested)


def _accuracy(
    before: Evaluation, pruned: Evaluation, tuned: Evaluation, val_before: Evaluation | None,
    val_after: Evaluation | None, validation: Split | None,
) -> Accuracy:
    checked = None
    if val_before is not None and val_after is not None and validation is not None:
        checked = ValidationAccuracy(size=len(validation), before=val_before,
                                     after_finetune=val_after)
    return Accuracy(
        before=before,
        after_pruning=pruned,
        after_finetune=tuned,
        delta_pruning=pruned.accuracy - before.accuracy,
        delta_total=tuned.accuracy - before.accuracy,
        validation=checked,
    )
