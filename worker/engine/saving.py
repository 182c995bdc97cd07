"""Write the pruned model in every format it can take, and describe files for the report.

The masks are already folded into the weights (plain tensors, no weight_orig/weight_mask),
so each file loads with plain PyTorch and shows the report's zeros.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import assert_never

import torch
from torch import nn

from core.jobs.formats import ModelFormat
from core.jobs.report import FileInfo
from core.storage.digest import sha256_file
from worker.engine import compressed, exported, scripting, sparse_layout
from worker.engine.quantize import QuantizedTensor


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies with no shared storage (safetensors refuses sharing)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_all(
    module: nn.Module, primary: ModelFormat, output_dir: Path,
    quantized: Mapping[str, QuantizedTensor] | None = None,
) -> dict[ModelFormat, Path]:
    """Write ``primary`` (errors propagate), then every other format that can be made.
    ``quantized``: the tables the compressed format stores the quantised weights by."""
    output_dir.mkdir(parents=True, exist_ok=True)
    module = module.to("cpu").eval()
    outputs = {primary: _save(module, primary, output_dir, quantized)}
    for fmt in ModelFormat:
        if fmt not in outputs and fmt.uploadable:  # the others: the deploy phase's
            try:
                outputs[fmt] = _save(module, fmt, output_dir, quantized)
            except Exception:  # noqa: BLE001 - a secondary format is a convenience only
                (output_dir / fmt.file_name).unlink(missing_ok=True)
    return {fmt: outputs[fmt] for fmt in ModelFormat if fmt in outputs}


def _save(module: nn.Module, fmt: ModelFormat, output_dir: Path,
          quantized: Mapping[str, QuantizedTensor] | None) -> Path:
    path = output_dir / fmt.file_name
    if fmt is ModelFormat.TORCHSCRIPT:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream, still our format
            warnings.simplefilter("ignore", FutureWarning)
            if not isinstance(module, torch.jit.ScriptModule):
                module = scripting.script(module)
            torch.jit.save(module, str(path))
    elif fmt is ModelFormat.STATE_DICT:
        torch.save(cpu_state_dict(module), str(path))
    elif fmt is ModelFormat.SAFETENSORS:
        from safetensors.torch import save_file

        save_file(cpu_state_dict(module), str(path), metadata={"format": "pt"})
    elif fmt is ModelFormat.SPARSE_SAFETENSORS:
        sparse_layout.save(cpu_state_dict(module), path)
    elif fmt is ModelFormat.PT2:
        exported.save_exported(module, path)
    elif fmt is ModelFormat.COMPRESSED:
        compressed.save(cpu_state_dict(module), path, quantized)
    elif fmt in (ModelFormat.ONNX, ModelFormat.ONNX_INT8, ModelFormat.TORCHAO_INT8):
        raise ValueError(f"{fmt} is written by the deploy phase (worker/engine/deploy.py)")
    else:  # a format without a writer: mypy says so when a member is added
        assert_never(fmt)
    return path


def file_info(path: Path, fmt: ModelFormat) -> FileInfo:
    """sha256, size, and zlib level-6 size, in one streaming pass."""
    compressor = zlib.compressobj(6)
    sizes = [0, 0]  # bytes, compressed bytes

    def measure(chunk: bytes) -> None:
        sizes[0] += len(chunk)
        sizes[1] += len(compressor.compress(chunk))

    sha = sha256_file(path, measure)
    sizes[1] += len(compressor.flush())
    return FileInfo(format=fmt, sha256=sha, bytes=sizes[0], compressed_bytes=sizes[1])
