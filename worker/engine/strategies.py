"""The four ways a job prunes, each a function returning one ``Pruned``.

- target: channel removal per group searched to meet a budget (``targets.py``), or for the
  compressed download's size, unstructured sparsity x k-means bits (``target_bits.py``);
- shrink: remove whole channels (a smaller dense model), then fine-tune it as it is;
- search: the accuracy-budget search over trials, keeping the best within the budget;
- schedule: the spec's schedule (one-shot, iterative, AGP) with its masked fine-tuning.
"""

from __future__ import annotations

import copy

import torch

from core.jobs.error_codes import JobErrorCode
from core.jobs.report import REPORT_VERSION, Evaluation, Sensitivity, TargetReport
from core.jobs.spec import PruningSpec
from worker.engine import pruning, target_bits, targets, training
from worker.engine.errors import EngineError
from worker.engine.job import Job, device_name
from worker.engine.results import Dense, Pruned, Splits, Tuned, Upload
from worker.engine.schedules import ScheduleRun
from worker.engine.search import Searcher
from worker.engine.trials import TrialScope


def prune(job: Job, upload: Upload, splits: Splits, dense: Dense, scan: Sensitivity | None
          ) -> Pruned:
    """Prune ``upload.model`` as the spec says, fine-tuning included."""
    job.enter("pruning")
    if job.spec.target is not None and job.spec.target.quantized:
        return _target_bits(job, upload, splits, dense)
    if upload.target_groups is not None:
        return _target(job, upload, splits, dense)
    if upload.shrinking is not None:
        return _shrink(job, upload, splits)
    if job.spec.search is not None and splits.validation is not None \
            and dense.validation is not None:
        return _search(job, upload, splits, dense, scan)
    return _schedule(job, upload, splits)


def _shrink(job: Job, upload: Upload, splits: Splits) -> Pruned:
    assert upload.shrinking is not None
    twin = copy.deepcopy(upload.model)  # the speedup is timed against it at the end
    with job.timed("prune"):
        shrunk = upload.shrinking.apply()
    # a smaller dense model: nothing left to mask, so the schedule fine-tunes it as it is
    after = _run_schedule(job, shrunk.model, [], upload, splits)
    return Pruned(shrunk.model, upload.pruning, after, shrunk_rows=shrunk.rows,
                  shrink=shrunk.report, dense_twin=twin)


def _target(job: Job, upload: Upload, splits: Splits, dense: Dense) -> Pruned:
    spec, target = job.spec, job.spec.target
    assert target is not None and upload.target_groups is not None
    assert splits.validation is not None and dense.validation is not None
    meter = targets.Meter(target, spec, job.device, splits.sample)
    builder = targets.Builder(upload.target_groups, spec.seed)
    with job.timed("target"):
        dense_value = meter(upload.model)
        meter = meter.paired(upload.model, dense_value)  # latency: each timed against it
        name, constraint = target.constraint
        bound = constraint.bound(dense_value)
        explorer = targets.Explorer(builder, meter, TrialScope(
            bound, splits.validation, splits.test, splits.train, spec,
            dense.validation.accuracy, job.on_progress, job.should_cancel))
        table = explorer.table()
        plan = targets.trial_plan(explorer, table, dense_value)
        trials = [explorer.trial(i, strategy, level, table, dense_value)
                  for i, (strategy, level) in enumerate(plan, start=1)]
    report = TargetReport(constraint=name, bound=bound, dense_value=dense_value,
                          detail=meter.detail(), max_accuracy_drop=target.max_accuracy_drop,
                          dense_accuracy=dense.validation.accuracy, groups=table,
                          trials=trials, chosen=None)
    chosen = targets.choose(trials)
    if chosen is None:
        raise _unreachable(job, report, splits)
    widths = trials[chosen].widths
    removed = {p.name: p.group.channels - widths[p.name] for p in builder.groups}
    twin = copy.deepcopy(upload.model)  # the speedup is timed against it at the end
    with job.timed("prune"):
        shrunk = builder.build(removed)
    applied = builder.spec(removed)
    after = _finetune_as_is(job, shrunk.model, applied, splits)
    final_val = training.evaluate(shrunk.model, splits.validation, job.should_cancel).accuracy
    final_value = meter(shrunk.model)
    report = report.model_copy(update={"chosen": chosen, "final_value": final_value,
                                       "final_val_accuracy": final_val})
    if dense.validation.accuracy - final_val > target.max_accuracy_drop + 1e-12:
        raise _unreachable(job, report, splits)
    # report.spec keeps the spec as sent (its rules refuse overrides with a target): the
    # chosen channels per group are report.target's chosen trial and report.shrink
    return Pruned(shrunk.model, upload.pruning, after, shrunk_rows=shrunk.rows,
                  shrink=shrunk.report, dense_twin=twin, target=report)


def _target_bits(job: Job, upload: Upload, splits: Splits, dense: Dense) -> Pruned:
    """A compressed bytes target: unstructured sparsity x k-means bits (``target_bits``);
    the chosen bits are quantised in the quantise phase, and ``settle`` checks the result."""
    spec, target = job.spec, job.spec.target
    assert target is not None and target.bytes is not None
    assert splits.validation is not None and dense.validation is not None
    if target.bytes.format not in dense.cost.bytes:
        raise EngineError(JobErrorCode.INVALID_SPEC, "this model cannot be written as "
                          "compressed: choose another target.bytes.format")
    dense_value = float(dense.cost.bytes[target.bytes.format])  # the upload, unquantised
    explorer = target_bits.BitsExplorer(upload.model, upload.targets, TrialScope(
        target.bytes.bound(dense_value), splits.validation, splits.test, splits.train, spec,
        dense.validation.accuracy, job.on_progress, job.should_cancel))
    with job.timed("target"):
        trials = explorer.run()
        explorer.restore()
    report = TargetReport(
        constraint="bytes", bound=explorer.scope.bound, dense_value=dense_value,
        detail="file bytes of format compressed, k-means quantised at the chosen bits "
               f"(tried: {', '.join(map(str, target.quantize_bits))})",
        max_accuracy_drop=target.max_accuracy_drop, dense_accuracy=dense.validation.accuracy,
        candidates="sparsity_bits", groups=[], trials=trials, chosen=None)
    chosen = target_bits.choose(trials)
    if chosen is None:
        raise _unreachable(job, report, splits)
    sparsity, bits = trials[chosen].sparsity, trials[chosen].bits
    assert sparsity is not None and bits is not None
    applied = upload.pruning.model_copy(update={"amount": sparsity})
    after = _run_schedule(job, upload.model, upload.targets, upload, splits, applied)
    with job.timed("target"):  # the file drifted with the full fine-tune: fit it
        final = target_bits.fit(upload.model, upload.targets, spec, bits, explorer.scope.bound)
    applied = applied.model_copy(update={"amount": round(final, 6)})
    report = report.model_copy(update={"chosen": chosen, "final_sparsity": final})
    return Pruned(upload.model, applied, after, targets=upload.targets, target=report,
                  quantize=target_bits.quantize_spec(spec, bits))


def settle(job: Job, pruned: Pruned, splits: Splits, tuned: Tuned) -> Pruned:
    """A compressed target, once quantised: the download's bytes and the decoded model's
    validation drop, in the report; ``target_unreachable`` when either misses."""
    report, target = pruned.target, job.spec.target
    if report is None or target is None or report.candidates != "sparsity_bits":
        return pruned
    assert tuned.compressed_bytes is not None and tuned.validation is not None
    final = tuned.validation.after_finetune.accuracy
    report = report.model_copy(update={"final_value": float(tuned.compressed_bytes),
                                       "final_val_accuracy": final})
    pruned.target = report
    if tuned.compressed_bytes > report.bound or \
            report.dense_accuracy - final > target.max_accuracy_drop + 1e-12:
        raise _unreachable(job, report, splits)
    return pruned


def _unreachable(job: Job, report: TargetReport, splits: Splits) -> EngineError:
    """target_unreachable, with the frontier as the failed job's report (no model)."""
    assert job.spec.target is not None
    error = targets.unreachable(job.spec.target, report.trials, report.constraint,
                                report.bound, report.dense_accuracy, report.final_val_accuracy,
                                report.final_value)
    error.report = {
        "report_version": REPORT_VERSION, "spec": job.spec.model_dump(mode="json"),
        "device": device_name(job.device), "torch_version": torch.__version__,
        "seed": job.spec.seed, "timings_s": job.clock.done(),
        "target": report.model_dump(mode="json"),
        "data": splits.sources.model_dump(mode="json"),
        "error": {"code": error.code.value, "message": error.message},
    }
    return error


def _finetune_as_is(job: Job, model: torch.nn.Module, spec: PruningSpec, splits: Splits
                    ) -> Evaluation:
    """Fine-tune a physically smaller model (nothing to mask); the test accuracy first."""
    evaluations: list[Evaluation] = []

    def after_first_prune() -> None:
        evaluations.append(training.evaluate(model, splits.test, job.should_cancel))

    run = ScheduleRun(model, [], spec, job.spec.finetune, splits.train, job.spec.seed,
                      job.on_progress, job.should_cancel, after_first_prune)
    run.run()
    job.clock.add(run.timings)
    return evaluations[0]


def _search(job: Job, upload: Upload, splits: Splits, dense: Dense, scan: Sensitivity | None
            ) -> Pruned:
    assert splits.validation is not None and dense.validation is not None
    spec = job.spec
    assert spec.search is not None
    with job.timed("search"):
        outcome = Searcher(
            upload.model, upload.targets, upload.pruning, spec.finetune, spec.search,
            splits.train, splits.validation, splits.test, spec.seed, dense.validation, scan,
            job.on_progress, job.should_cancel,
        ).run()
    # per_layer: the per-tensor amounts are in report.search (the trial), not the spec
    applied = outcome.spec.model_copy(update={"overrides": spec.pruning.overrides})
    return Pruned(upload.model, applied, outcome.after_pruning, targets=upload.targets,
                  search=outcome.report)


def _schedule(job: Job, upload: Upload, splits: Splits) -> Pruned:
    after = _run_schedule(job, upload.model, upload.targets, upload, splits)
    return Pruned(upload.model, upload.pruning, after, targets=upload.targets)


def _run_schedule(job: Job, model: torch.nn.Module, targets: list[pruning.Target],
                  upload: Upload, splits: Splits, spec: PruningSpec | None = None
                  ) -> Evaluation:
    """Run the spec's schedule in place (``spec``: the pruning as applied, by default the
    upload's); the test accuracy right after the first pruning."""
    evaluations: list[Evaluation] = []

    def after_first_prune() -> None:
        job.enter("evaluating")
        with job.timed("evaluate"):
            evaluations.append(training.evaluate(model, splits.test, job.should_cancel))

    run = ScheduleRun(model, targets, spec or upload.pruning, job.spec.finetune, splits.train,
                      job.spec.seed, job.on_progress, job.should_cancel, after_first_prune)
    run.run()
    job.clock.add(run.timings)
    return evaluations[0]
