"""The phases of a job, in the order ``run_job`` calls them; each returns one result object.

The pruning itself (shrink, search or a schedule) is ``strategies.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from core.jobs.cost import Cost
from core.jobs.error_codes import JobErrorCode
from core.jobs.formats import SAME_FORMAT, ModelFormat
from core.jobs.report import (
    Accuracy,
    DataReport,
    Evaluation,
    Report,
    Sensitivity,
    ValidationAccuracy,
)
from core.jobs.spec import JobSpec, PruningSpec, SensitivitySpec
from worker.engine import (
    datasets,
    deep_compression,
    deploy,
    measure,
    pruning,
    saving,
    sensitivity,
    shrink,
    targets,
    training,
)
from worker.engine.data import Split
from worker.engine.errors import EngineError
from worker.engine.job import Job, device_name
from worker.engine.loading import load_model
from worker.engine.results import Costs, Dense, Pruned, Saved, Splits, Tuned, Upload


def load(job: Job, model_path: Path) -> Upload:
    with job.timed("load", synced=False):
        loaded = load_model(model_path, job.spec.architecture, job.settings)
        model = loaded.module.to(job.device)
        applied = pruning.effective_spec(job.spec.pruning)
        shrinking = (shrink.prepare(model, applied, job.spec.architecture, job.spec.seed)
                     if applied.shrink else None)
        target = job.spec.target
        groups = (targets.prepare_groups(model, job.spec)
                  if target is not None and not target.quantized else None)
    requested = job.spec.output_format
    primary = loaded.format if requested == SAME_FORMAT else ModelFormat(requested)
    return Upload(model_path, loaded, model, applied, [], shrinking, primary, groups)


def load_data(job: Job, upload: Upload) -> Splits:
    torch.manual_seed(job.spec.seed)  # the model's own randomness (dropout), for determinism
    with job.timed("data"):
        data = datasets.load_job_data(job.spec, job.settings, job.device, job.dataset)
        datasets.check_fits(upload.model, data, job.spec.input)  # before any training
    return Splits(data.figures, data.train, data.validation, data.sources, data.used)


def measure_dense(job: Job, upload: Upload, splits: Splits) -> Dense:
    """Cost and accuracy of the model as uploaded; with distillation, its soft targets."""
    with job.timed("cost"):
        cost = _cost(job, upload.model, upload.primary, saved=None, sample=splits.sample)
    job.enter("evaluating")
    with job.timed("evaluate"):
        test = training.evaluate(upload.model, splits.test, job.should_cancel)
        validation = _evaluate_validation(job, upload.model, splits.validation)
    distill = job.spec.finetune.distill
    if distill is not None and splits.train is not None:
        with job.timed("teacher"):
            splits.train = (  # augmented: run on each batch; else the soft targets, once
                splits.train.with_teacher_fn(training.frozen_teacher(upload.model, distill))
                if job.spec.finetune.augment is not None
                else splits.train.with_teacher(training.teacher_targets(
                    upload.model, splits.train, distill, job.should_cancel)))
    upload.targets = _targets(upload.model, upload.pruning)
    return Dense(cost, test, validation, splits.sample)


def scan_sensitivity(job: Job, upload: Upload, splits: Splits) -> Sensitivity | None:
    """Per-tensor accuracy curves on validation, when the spec asks (or per-layer search)."""
    spec = job.spec
    wanted = (spec.analysis is not None and spec.analysis.sensitivity is not None) or (
        spec.search is not None and spec.search.per_layer)
    if splits.validation is None or not wanted:
        return None
    job.enter("sensitivity")
    with job.timed("sensitivity"):
        return sensitivity.scan(
            upload.targets, upload.pruning, _scan_amounts(spec), upload.model, splits.validation,
            seed=spec.seed, on_progress=job.on_progress, should_cancel=job.should_cancel)


def evaluate_final(job: Job, dense: Dense, pruned: Pruned, splits: Splits) -> Tuned:
    job.enter("evaluating")
    with job.timed("evaluate"):
        test = (training.evaluate(pruned.model, splits.test, job.should_cancel)
                if splits.train is not None else pruned.after_pruning)
        after = _evaluate_validation(job, pruned.model, splits.validation)
    checked = None
    if dense.validation is not None and after is not None and splits.validation is not None:
        checked = ValidationAccuracy(size=len(splits.validation), before=dense.validation,
                                     after_finetune=after)
    return Tuned(test, checked)


def quantize(job: Job, pruned: Pruned, splits: Splits, tuned: Tuned) -> Tuned:
    """spec.quantize (or a compressed target's chosen bits): quantise (and fine-tune) the
    pruned model, masks held; its accuracy on test and validation, scored from the decoded
    compressed file, replaces the fine-tuned model's."""
    chosen = pruned.quantize or job.spec.quantize
    if chosen is None:
        return tuned
    job.enter("quantizing")
    with job.timed("quantize"):
        targets = pruning.find_targets(pruned.model, pruned.pruning)
        done = deep_compression.quantize_phase(
            pruned.model, targets, job.spec.model_copy(update={"quantize": chosen}),
            splits.train, splits.test, tuned.test,
            on_progress=job.on_progress, should_cancel=job.should_cancel)
        validation = tuned.validation
        after = _evaluate_validation(job, pruned.model, splits.validation)
        if validation is not None and after is not None:
            validation = validation.model_copy(update={"after_finetune": after})
    assert done is not None
    pruned.quantized = done.tables
    return Tuned(done.after, validation, before_quantization=done.before,
                 compressed_bytes=done.bytes)


def measure_cost(job: Job, dense: Dense, pruned: Pruned) -> Costs:
    """The cost after; a physically smaller model is timed again against its dense twin,
    in alternation, so the speedup does not depend on the machine's load over the job."""
    with job.timed("cost"):
        after = _cost(job, pruned.model, ModelFormat.STATE_DICT, saved={},  # bytes: at saving
                      sample=dense.sample)
        before = dense.cost
        if pruned.dense_twin is not None:
            dense_ms, shrunk_ms = measure.measure_latencies(
                [pruned.dense_twin, pruned.model], job.spec.input, job.device, dense.sample)
            method = measure.paired_method(job.device)
            before = before.model_copy(update={"latency_ms": dense_ms, "latency_method": method})
            after = after.model_copy(update={"latency_ms": shrunk_ms, "latency_method": method})
            pruned.dense_twin = None
    return Costs(before, after)


def save(job: Job, upload: Upload, pruned: Pruned) -> Saved:
    job.enter("saving")
    primary = upload.primary
    with job.timed("save", synced=False):
        outputs = dict(saving.save_all(pruned.model, primary, job.output_dir,
                                       pruned.quantized))
        return Saved(outputs, primary, saving.file_info(upload.path, upload.loaded.format),
                     saving.file_info(outputs[primary], primary))


def deploy_models(job: Job, pruned: Pruned, splits: Splits, saved: Saved) -> Saved:
    """spec.deploy: ONNX and int8 files, each scored and timed where it runs."""
    if job.spec.deploy is None:
        return saved
    job.enter("deploying")
    with job.timed("deploy"):
        made = deploy.deploy_phase(pruned.model, job.spec.deploy, job.spec.input, splits.test,
                                   job.output_dir)
    assert made is not None
    saved.outputs.update(made.outputs)
    saved.runtimes = made.runtimes
    return saved


def report(job: Job, upload: Upload, splits: Splits, dense: Dense, scan: Sensitivity | None,
           pruned: Pruned, tuned: Tuned, costs: Costs, saved: Saved) -> Report:
    spec = job.spec
    rows = pruned.rows()
    after = costs.after.model_copy(update={"bytes": measure.file_bytes(saved.outputs)})
    cost = measure.report(costs.before, after).model_copy(update={"runtimes": saved.runtimes})
    return Report(
        spec=spec.model_copy(update={"pruning": pruned.pruning}),
        tensors=rows,
        targeted=pruning.totals([(r.elements, r.zeros) for r in rows]),
        all_parameters=pruning.parameter_totals(pruned.model),
        accuracy=_accuracy(dense, pruned.after_pruning, tuned, splits.used.figures_from),
        timings_s=job.clock.done(),
        device=device_name(job.device),
        torch_version=torch.__version__,
        seed=spec.seed,
        input=saved.input,
        output=saved.output,
        cost=cost,
        sensitivity=scan if spec.analysis and spec.analysis.sensitivity else None,
        search=pruned.search,
        shrink=pruned.shrink,
        target=pruned.target,
        data=splits.sources,
        warnings=[w for w in [memorised_warning(dense, splits.sources),
                              pruned.target and targets.final_warning(pruned.target)] if w],
        compressed=(deep_compression.compressed_report(saved.outputs, costs.before.parameters)
                    if pruned.quantized is not None else None),
        dataset=splits.used,
    )


# Above this many standard errors of the gap, validation beating test is memorisation, not luck
MEMORISED_SIGMAS = 3.0
MEMORISED_MIN_GAP = 0.005


def memorised_warning(dense: Dense, sizes: DataReport) -> str | None:
    """A warning when the dense model scores far better on validation than on test: its
    validation images look like ones it trained on, so decisions on them are too lenient."""
    if dense.validation is None or sizes.validation is None:
        return None
    val, test = dense.validation.accuracy, dense.test.accuracy
    p = min(max((val + test) / 2, 1e-3), 1 - 1e-3)
    se = math.sqrt(p * (1 - p) * (1 / sizes.validation.images + 1 / sizes.test.images))
    gap = val - test
    if gap <= max(MEMORISED_MIN_GAP, MEMORISED_SIGMAS * se):
        return None
    return (f"the dense model's validation accuracy {val:.4f} is {gap:.4f} above its test "
            f"accuracy {test:.4f} ({gap / se:.1f} standard errors): it looks trained on the "
            "validation images, so every decision judged on them (sensitivity, search, target) "
            "was too lenient. Use finetune.validation_from test_half unless the upload was "
            "trained without the held-out images.")


def _evaluate_validation(job: Job, model: nn.Module, validation: Split | None
                         ) -> Evaluation | None:
    if validation is None:
        return None
    return training.evaluate(model, validation, job.should_cancel).model_copy(
        update={"split": "validation"})


def _scan_amounts(spec: JobSpec) -> list[float]:
    if spec.analysis is not None and spec.analysis.sensitivity is not None:
        return spec.analysis.sensitivity.amounts
    return SensitivitySpec().amounts


def _targets(model: nn.Module, spec: PruningSpec) -> list[pruning.Target]:
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


def _cost(job: Job, model: nn.Module, primary: ModelFormat, saved: dict[str, int] | None,
          sample: tuple[int, ...]) -> Cost:
    """The model's cost now; ``saved=None``: measure its bytes by writing it under the job's
    output folder (a killed job leaves nothing elsewhere)."""
    if saved is None:
        saved = measure.bytes_as_saved(
            model, lambda m, folder: saving.save_all(m, primary, folder), job.device,
            job.output_dir)
    return measure.measure(model, job.spec.input, job.device, device_name(job.device), saved,
                           sample)


def _accuracy(dense: Dense, pruned: Evaluation, tuned: Tuned,
              figures_from: Literal["validation", "test"]) -> Accuracy:
    """The figures, each naming its split (a dataset without a test split reports on its
    validation split)."""
    def named(e: Evaluation) -> Evaluation:
        return e.model_copy(update={"split": figures_from})

    return Accuracy(
        before=named(dense.test),
        after_pruning=named(pruned),
        after_finetune=named(tuned.test),
        delta_pruning=pruned.accuracy - dense.test.accuracy,
        delta_total=tuned.test.accuracy - dense.test.accuracy,
        validation=tuned.validation,
        before_quantization=tuned.before_quantization,
    )
