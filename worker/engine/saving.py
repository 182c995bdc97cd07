"""Write the pruned model in every format it can take, and describe files for the report.

The masks are already folded into the weights (plain tensors, no weight_orig/weight_mask),
so each file loads with plain PyTorch and shows the report's zeros.
"""

from __future__ import annotations

import hashlib
import warnings
import zlib
from pathlib import Path

import torch
from torch import nn

from core.report import FileInfo
from worker.engine import compact
from worker.engine.loading import ModelFormat

FILE_NAMES: dict[ModelFormat, str] = {
    "torchscript": "model.torchscript.pt",
    "state_dict": "model.state_dict.pt",
    "safetensors": "model.safetensors",
    "sparse_safetensors": "model.sparse.safetensors",  # bitmask + values (engine/compact.py)
}
_CHUNK = 1 << 20


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies with no shared storage (safetensors refuses sharing)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_all(
    module: nn.Module, primary: ModelFormat, output_dir: Path
) -> dict[str, Path]:
    """Write ``primary`` (errors propagate), then every other format that can be made."""
    output_dir.mkdir(parents=True, exist_ok=True)
    module = module.to("cpu").eval()
    outputs = {primary: _save(module, primary, output_dir)}
    for fmt in FILE_NAMES:
        if fmt not in outputs:
            try:
                outputs[fmt] = _save(module, fmt, output_dir)
            except Exception:  # noqa: BLE001 - a secondary format is a convenience only
                (output_dir / FILE_NAMES[fmt]).unlink(missing_ok=True)
    return {fmt: outputs[fmt] for fmt in FILE_NAMES if fmt in outputs}


def _save(module: nn.Module, fmt: ModelFormat, output_dir: Path) -> Path:
    path = output_dir / FILE_NAMES[fmt]
    if fmt == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated upstream, still our format
            warnings.simplefilter("ignore", FutureWarning)
            if not isinstance(module, torch.jit.ScriptModule):
                module = torch.jit.script(module)
            torch.jit.save(module, str(path))
    elif fmt == "state_dict":
        torch.save(cpu_state_dict(module), str(path))
    elif fmt == "sparse_safetensors":
        compact.save(cpu_state_dict(module), path)
    else:
        from safetensors.torch import save_file

        save_file(cpu_state_dict(module), str(path), metadata={"format": "pt"})
    return path


def file_info(path: Path, fmt: ModelFormat) -> FileInfo:
    """sha256, size, and zlib level-6 size, in one streaming pass."""
    digest = hashlib.sha256()
    compressor = zlib.compressobj(6)
    compressed = 0
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            compressed += len(compressor.compress(chunk))
    compressed += len(compressor.flush())
    return FileInfo(format=fmt, sha256=digest.hexdigest(), bytes=size, compressed_bytes=compressed)
