"""The quantise phase of a job (``spec.quantize``): quantise and fine-tune, then score the
model *from its decoded compressed file*, so the report's accuracy is what a user who decodes
the download gets (the engine checks the decoded tensors equal its own, bit for bit).

``run_job`` calls ``quantize_phase`` after fine-tuning and ``QuantizePhase.apply`` on the
report; ``QuantizePhase.tables`` go to ``saving.save_all`` for the compressed writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.formats import ModelFormat
from core.jobs.report import CompressedReport, Evaluation, Report, TensorReport
from core.jobs.spec import JobSpec
from worker.engine import compressed, quantize, training
from worker.engine.data import Split
from worker.engine.errors import EngineError
from worker.engine.pruning import Target
from worker.engine.quantize import QuantizedTensor
from worker.engine.saving import cpu_state_dict


@dataclass
class QuantizePhase:
    tables: dict[str, QuantizedTensor]
    before: Evaluation  # the fine-tuned model before quantisation (test split)
    after: Evaluation  # the quantised model, scored from its decoded compressed file

    def apply(self, report: Report, outputs: Mapping[ModelFormat, Path],
              dense_bytes: int) -> Report:
        """The report with the quantised accuracy (the pre-quantisation one beside it),
        per-tensor bits and codebook sizes, and the compressed file's size and ratio."""
        accuracy = report.accuracy.model_copy(update={
            "after_finetune": self.after, "before_quantization": self.before,
            "delta_total": self.after.accuracy - report.accuracy.before.accuracy})
        return report.model_copy(update={
            "accuracy": accuracy,
            "tensors": [self._row(row) for row in report.tensors],
            "compressed": compressed_report(outputs, dense_bytes),
        })

    def _row(self, row: TensorReport) -> TensorReport:
        table = self.tables.get(row.name)
        if table is None:
            return row
        return row.model_copy(update={
            "bits": table.bits,
            "codebook_size": table.table.numel() if table.kind == "codebook" else None})


def dense_fp32_bytes(model: nn.Module) -> int:
    """The dense fp32 state_dict's tensor bytes (4 per element): what the ratio divides."""
    return sum(4 * t.numel() for t in model.state_dict().values())


def compressed_report(outputs: Mapping[ModelFormat, Path], dense_bytes: int
                      ) -> CompressedReport | None:
    path = outputs.get(ModelFormat.COMPRESSED)
    if path is None:
        return None
    size = path.stat().st_size
    return CompressedReport(bytes=size, dense_fp32_bytes=dense_bytes,
                            ratio=dense_bytes / max(size, 1))


def quantize_phase(model: nn.Module, targets: list[Target], spec: JobSpec,
                   train: Split | None, test: Split, before: Evaluation, *,
                   on_progress: training.ProgressFn | None = None,
                   should_cancel: training.CancelFn | None = None) -> QuantizePhase | None:
    """None when the spec asks for no quantisation."""
    if spec.quantize is None:
        return None
    tables = quantize.quantize(model, targets, spec.quantize, spec.finetune, train,
                               seed=spec.seed, on_progress=on_progress,
                               should_cancel=should_cancel)
    load_decoded(model, tables)
    return QuantizePhase(tables, before, training.evaluate(model, test, should_cancel))


@torch.no_grad()
def load_decoded(model: nn.Module, tables: Mapping[str, QuantizedTensor]) -> None:
    """Encode the model, decode it with the client's reader, check every tensor equals the
    model's bit for bit, and load the decoded tensors (so the scores come from them)."""
    state = cpu_state_dict(model)
    decoded = compressed.decode(compressed.encode(state, tables))
    for name in tables:
        if decoded[name].numpy().tobytes() != state[name].numpy().tobytes():
            raise EngineError(JobErrorCode.INTERNAL_ERROR, f"the compressed encoding of "
                              f"{name!r} does not decode to the quantised weights")
    model.load_state_dict({k: v.to(state[k].dtype) for k, v in decoded.items()})
