"""The quantise phase of a job (``spec.quantize``): quantise and fine-tune, then score the
model *from its decoded compressed file*, so the report's accuracy is what a user who decodes
the download gets (the engine checks the decoded tensors equal its own, bit for bit).

``phases.quantize`` calls ``quantize_phase`` after the final evaluation; the tables go to
``saving.save_all`` for the compressed writer, ``annotate`` and ``compressed_report`` to the
report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.formats import ModelFormat
from core.jobs.report import CompressedReport, Evaluation, TensorReport
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
    bytes: int  # that compressed file's size (the download's)


def annotate(rows: list[TensorReport], tables: Mapping[str, QuantizedTensor]
             ) -> list[TensorReport]:
    """Per-tensor rows with their bits and (kmeans) codebook sizes."""
    return [row if row.name not in tables else row.model_copy(update={
        "bits": tables[row.name].bits,
        "codebook_size": (tables[row.name].table.numel()
                          if tables[row.name].kind == "codebook" else None)})
        for row in rows]


def compressed_report(outputs: Mapping[ModelFormat, Path], parameters: int
                      ) -> CompressedReport | None:
    """The compressed file against the dense model's fp32 bytes (4 per parameter)."""
    path = outputs.get(ModelFormat.COMPRESSED)
    if path is None:
        return None
    size = path.stat().st_size
    return CompressedReport(bytes=size, dense_fp32_bytes=4 * parameters,
                            ratio=4 * parameters / max(size, 1))


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
    size = load_decoded(model, tables)
    return QuantizePhase(tables, before, training.evaluate(model, test, should_cancel), size)


@torch.no_grad()
def load_decoded(model: nn.Module, tables: Mapping[str, QuantizedTensor]) -> int:
    """Encode the model, decode it with the client's reader, check every tensor equals the
    model's bit for bit, and load the decoded tensors (so the scores come from them); the
    encoded file's bytes (what the compressed download of this model weighs)."""
    state = cpu_state_dict(model)
    encoded = compressed.encode(state, tables)
    decoded = compressed.decode(encoded)
    for name in tables:
        if decoded[name].numpy().tobytes() != state[name].numpy().tobytes():
            raise EngineError(JobErrorCode.INTERNAL_ERROR, f"the compressed encoding of "
                              f"{name!r} does not decode to the quantised weights")
    model.load_state_dict({k: v.to(state[k].dtype) for k, v in decoded.items()})
    return len(encoded)
