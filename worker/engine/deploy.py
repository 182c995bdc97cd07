"""The deploy phase (``spec.deploy``): models a runtime loads, verified and timed in the job.

- ONNX: exported from the eager model with ``torch.onnx.export(dynamo=True)`` (a batch
  dimension left dynamic); a TorchScript upload goes through
  ``torch._export.converter.TS2EPConverter`` first. The file is then run by ONNX Runtime over
  the whole MNIST test split: its accuracy sits beside the PyTorch model's in the report.
  Where export fails the report says ``onnx_unavailable: <why>`` and no file is written.
- int8 ONNX: ``onnxruntime.quantization.quantize_dynamic`` of that file (int8 weights,
  activations quantised at run time), timed in ONNX Runtime in alternation with the fp32
  file and kept only when it is faster at the largest batch timed: on this CPU an MLP's
  MatMulInteger runs about 3x faster, while LeNet-5's ConvInteger runs about 4x slower.
  Latency alone decides: the accuracy is reported, never used to choose. It is scored at
  the evaluation batch, since activation scales are computed per batch (another batch size
  can move a prediction).
- int8: ``torchao.quantization.quantize_`` with ``Int8WeightOnlyConfig`` (Linear layers'
  weights to int8 per channel; BSD-3, runs on CPU) on a copy of the model, saved with
  ``torch.save(state_dict)``; the saved file is read back with ``weights_only=True`` before it
  is reported. ``torch.ao.quantization`` is deprecated upstream and is not used.

Latency: CPU, batches 1 and 256, each runtime timed in alternation with the fp32 PyTorch
model (``measure.time_alternating``), so both see the same load on a shared machine.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.jobs.cost import Latency, RuntimeCost
from core.jobs.formats import ModelFormat
from core.jobs.report import Report
from core.jobs.spec import DeploySpec, InputSpec
from worker.engine import measure, training
from worker.engine.data import Split
from worker.engine.script_copy import reloaded

CPU = torch.device("cpu")


@dataclass
class DeployPhase:
    outputs: dict[ModelFormat, Path]
    runtimes: dict[str, RuntimeCost]

    def apply(self, report: Report) -> Report:
        if report.cost is None:
            return report
        cost = report.cost.model_copy(update={"runtimes": self.runtimes})
        return report.model_copy(update={"cost": cost})


def deploy_phase(model: nn.Module, spec: DeploySpec | None, input_spec: InputSpec,
                 test: Split, output_dir: Path) -> DeployPhase | None:
    if spec is None:
        return None
    model = copy.deepcopy(model).to(CPU).eval()
    split = Split(test.images.to(CPU), test.labels.to(CPU))
    reference = training.evaluate(model, split).accuracy
    outputs: dict[ModelFormat, Path] = {}
    runtimes: dict[str, RuntimeCost] = {}
    if spec.onnx:
        runtimes["onnx"] = _onnx(model, input_spec, split, reference, output_dir, outputs)
    if spec.onnx_int8:
        runtimes["onnx_int8"] = _onnx_int8(outputs.get(ModelFormat.ONNX), _onnx_batches(model),
                                           input_spec, split, reference, output_dir, outputs)
    if spec.int8:
        runtimes["int8"] = _int8(model, input_spec, split, reference, output_dir, outputs)
    return DeployPhase(outputs, runtimes)


# --- ONNX ---------------------------------------------------------------------------------

def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str | None:
    """Write ``path``; None, or the reason it cannot be done (nothing is left behind)."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            target: Any = model
            if isinstance(model, torch.jit.ScriptModule):
                from torch._export.converter import TS2EPConverter

                # a copy: the converter inlines the graphs it is given, in place
                target = TS2EPConverter(reloaded(model), (example,)).convert()
                dynamic = None  # the converted program's shapes are fixed at the example's
            else:
                dynamic = ({0: torch.export.Dim("batch", min=1, max=65536)},)
            program = torch.onnx.export(target, (example,), dynamo=True,
                                        dynamic_shapes=dynamic, verbose=False)
            if program is None:
                raise RuntimeError("torch.onnx.export returned no program")
            program.save(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure becomes the report's reason
        path.unlink(missing_ok=True)
        return f"onnx_unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return None


def ort_session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    # No busy-waiting threads after a run: they would steal the CPU from the PyTorch model
    # timed in alternation with this session (and from other jobs on the worker).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_run(session: Any, images: torch.Tensor) -> np.ndarray[Any, Any]:
    name = session.get_inputs()[0].name
    out: np.ndarray[Any, Any] = session.run(None, {name: images.numpy()})[0]
    return out


def ort_accuracy(session: Any, split: Split, batch: int) -> float:
    correct = 0
    for images, labels in split.batches(batch):
        correct += int((ort_run(session, images).argmax(axis=1) == labels.numpy()).sum())
    return correct / len(split)


def _onnx(model: nn.Module, input_spec: InputSpec, split: Split, reference: float,
          output_dir: Path, outputs: dict[ModelFormat, Path]) -> RuntimeCost:
    import onnxruntime

    runtime = f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider"
    path = output_dir / ModelFormat.ONNX.file_name
    scripted = isinstance(model, torch.jit.ScriptModule)
    example = measure.example_batch(input_spec, training.EVAL_BATCH if scripted else 2, CPU,
                                    tuple(split.images.shape[1:]))
    reason = export_onnx(model, example, path)
    if reason is not None:
        return RuntimeCost(runtime=runtime, available=False, reason=reason)
    session = ort_session(path)
    accuracy = ort_accuracy(session, split, training.EVAL_BATCH)
    outputs[ModelFormat.ONNX] = path
    ours, theirs = _paired(model, functools.partial(ort_run, session), input_spec,
                           _onnx_batches(model), tuple(split.images.shape[1:]))
    return RuntimeCost(runtime=runtime, available=True, accuracy=accuracy,
                       accuracy_delta=accuracy - reference, bytes=path.stat().st_size,
                       latency_ms=theirs, reference_latency_ms=ours)


def _onnx_batches(model: nn.Module) -> tuple[int, ...]:
    """The batch sizes an ONNX file of ``model`` runs: a converted TorchScript program keeps
    the example's fixed batch."""
    return (training.EVAL_BATCH,) if isinstance(model, torch.jit.ScriptModule) else (
        measure.BATCHES)


def _onnx_int8(fp32: Path | None, batches: tuple[int, ...], input_spec: InputSpec,
               split: Split, reference: float, output_dir: Path,
               outputs: dict[ModelFormat, Path]) -> RuntimeCost:
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    runtime = (f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider, "
               "quantize_dynamic QInt8")
    if fp32 is None:
        return RuntimeCost(runtime=runtime, available=False, reference="onnx",
                           reason="onnx_int8_unavailable: it is made from the job's ONNX "
                           "file, and there is none (deploy.onnx false, or runtimes.onnx "
                           "says why)")
    path = output_dir / ModelFormat.ONNX_INT8.file_name
    try:
        # int8 weights (per tensor, symmetric); activations quantised at run time
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8)
        session = ort_session(path)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the report's reason
        path.unlink(missing_ok=True)
        return RuntimeCost(runtime=runtime, available=False, reference="onnx",
                           reason=f"onnx_int8_unavailable: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:300]}")
    accuracy = ort_accuracy(session, split, training.EVAL_BATCH)
    fp32_ms, int8_ms = _paired(functools.partial(ort_run, ort_session(fp32)),
                               functools.partial(ort_run, session), input_spec, batches,
                               tuple(split.images.shape[1:]))
    measured = {"accuracy": accuracy, "accuracy_delta": accuracy - reference,
                "bytes": path.stat().st_size, "latency_ms": int8_ms,
                "reference_latency_ms": fp32_ms, "reference": "onnx"}
    slower = slower_reason(int8_ms, fp32_ms, max(batches))
    if slower is not None:
        path.unlink()
        return RuntimeCost(runtime=runtime, available=False, reason=slower, **measured)
    outputs[ModelFormat.ONNX_INT8] = path
    return RuntimeCost(runtime=runtime, available=True, **measured)


def slower_reason(int8_ms: dict[str, Latency], fp32_ms: dict[str, Latency], batch: int
                  ) -> str | None:
    """None when the int8 file is faster at ``batch`` (the largest timed; median); else why
    it is not kept."""
    largest = f"batch_{batch}"
    mine, theirs = int8_ms[largest].p50, fp32_ms[largest].p50
    if mine < theirs:
        return None
    return (f"onnx_int8_slower: {mine:.3g} ms against the fp32 ONNX file's {theirs:.3g} ms at "
            f"{largest} (p50, timed in alternation); not kept")


# --- int8 (torchao) -------------------------------------------------------------------------

def int8_model(model: nn.Module) -> nn.Module:
    """A copy with torchao int8 weight-only Linear layers."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantized = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(quantized, Int8WeightOnlyConfig())
    return quantized


def _int8(model: nn.Module, input_spec: InputSpec, split: Split, reference: float,
          output_dir: Path, outputs: dict[ModelFormat, Path]) -> RuntimeCost:
    import torchao

    runtime = f"torchao {torchao.__version__} Int8WeightOnlyConfig"
    if isinstance(model, torch.jit.ScriptModule) or not any(
            isinstance(m, nn.Linear) for m in model.modules()):
        return RuntimeCost(runtime=runtime, available=False, reason="int8_unavailable: "
                           "torchao quantises the nn.Linear layers of an eager model; this "
                           "one has none (TorchScript uploads are not eager)")
    quantized = int8_model(model).eval()
    path = output_dir / ModelFormat.TORCHAO_INT8.file_name
    torch.save(quantized.state_dict(), str(path))
    torch.load(str(path), weights_only=True)  # what a user will do: it must work
    outputs[ModelFormat.TORCHAO_INT8] = path
    accuracy = training.evaluate(quantized, split).accuracy
    ours, theirs = _paired(model, quantized, input_spec, measure.BATCHES,
                           tuple(split.images.shape[1:]))
    return RuntimeCost(runtime=runtime, available=True, accuracy=accuracy,
                       accuracy_delta=accuracy - reference, bytes=path.stat().st_size,
                       latency_ms=theirs, reference_latency_ms=ours)


def _paired(model: Callable[[torch.Tensor], object], other: Callable[[torch.Tensor], object],
            input_spec: InputSpec, batches: tuple[int, ...], sample: tuple[int, ...]
            ) -> tuple[dict[str, Latency], dict[str, Latency]]:
    """(the reference's, the other's) latency per batch size, timed in alternation on the
    CPU."""
    ours: dict[str, Latency] = {}
    theirs: dict[str, Latency] = {}
    with torch.inference_mode():
        for batch in batches:
            images = measure.example_batch(input_spec, batch, CPU, sample)
            a, b = measure.time_alternating(
                [functools.partial(model, images), functools.partial(other, images)], CPU)
            ours[f"batch_{batch}"], theirs[f"batch_{batch}"] = a, b
    return ours, theirs
