"""Open an uploaded model safely: structural checks first, then the one loader that fits.

The format is the one the door's checks (``core.uploads``) name, from the same sniffer:
- TorchScript: ``torch.jit.load`` onto the CPU, then ``audit_torchscript`` before any of its
  code runs;
- state_dict: a ``torch.save`` archive, ``torch.load(weights_only=True)`` only;
- safetensors: the safetensors library (no pickle at all);
- pt2: ``torch.export.load`` (``worker/engine/exported.py``), only after ``core.uploads.pt2``
  passed it here too.
- compressed: the client's NumPy reader (``client/decode.py``), bounded by the checked header.
state_dicts are loaded into a registry architecture named by the spec.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import assert_never

import torch
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.formats import ModelFormat
from core.settings import Settings
from core.uploads import UploadRejected, check_upload
from core.uploads.compressed import limits_from
from worker.engine import audit, compressed, exported, registry, sparse_layout
from worker.engine.errors import EngineError


@dataclass
class LoadedModel:
    module: nn.Module  # a ScriptModule for TorchScript uploads, a GraphModule for pt2
    format: ModelFormat
    architecture: str | None  # registry name for state_dict/safetensors uploads


def load_model(path: Path, architecture: str | None, settings: Settings) -> LoadedModel:
    """The model in ``path`` on the CPU, or EngineError with a documented code."""
    fmt = _checked_format(path, settings)
    if fmt is ModelFormat.TORCHSCRIPT:
        return LoadedModel(_load_torchscript(path, settings), fmt, None)
    if fmt is ModelFormat.PT2:
        return LoadedModel(exported.load_exported(path, settings), fmt, None)
    if fmt is ModelFormat.STATE_DICT:
        tensors = _load_state_dict(path)
    elif fmt is ModelFormat.SAFETENSORS:
        tensors = _load_safetensors(path)
    elif fmt is ModelFormat.SPARSE_SAFETENSORS:  # bitmask + values, checked at the door
        tensors = _decode_compact(_load_safetensors(path))
    elif fmt is ModelFormat.COMPRESSED:  # decoded to the sizes its (checked) header declares
        tensors = _decode_compressed(path, settings)
    elif fmt in (ModelFormat.ONNX, ModelFormat.ONNX_INT8, ModelFormat.TORCHAO_INT8):
        raise AssertionError(f"check_upload judged a download-only format: {fmt}")
    else:  # a format without a loader: mypy says so when a member is added
        assert_never(fmt)
    audit.check_tensors(tensors, settings)
    return LoadedModel(_into_architecture(tensors, architecture), fmt, architecture)


def _checked_format(path: Path, settings: Settings) -> ModelFormat:
    try:
        return check_upload(path, settings)
    except UploadRejected as exc:
        # The reason kind names the job code: unsafe_model, unsupported_model,
        # model_too_large or invalid_model.
        raise EngineError(exc.job_code, exc.message) from exc
    except OSError as exc:
        raise EngineError(JobErrorCode.INVALID_MODEL, f"cannot read the model file: {exc}") from exc


def _load_torchscript(path: Path, settings: Settings) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream, still our format
            warnings.simplefilter("ignore", FutureWarning)
            module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location="cpu"
            )
    except Exception as exc:  # torch raises RuntimeError, but also others for corrupt archives
        raise EngineError(
            JobErrorCode.INVALID_MODEL, f"not a loadable TorchScript archive: {exc}"
        ) from exc
    audit.audit_torchscript(module)
    audit.check_tensors(dict(module.state_dict()), settings)
    return module


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        raise EngineError(
            JobErrorCode.UNSUPPORTED_MODEL,
            "the archive holds more than tensors (e.g. a whole pickled nn.Module), which is "
            "never unpickled here; upload model.state_dict() saved with torch.save, a "
            f"safetensors file, or a TorchScript archive (torch.jit.save). Detail: {exc}",
        ) from exc
    except Exception as exc:
        raise EngineError(
            JobErrorCode.INVALID_MODEL, f"not a loadable torch.save archive: {exc}"
        ) from exc
    return _as_state_dict(obj)


def _as_state_dict(obj: object) -> dict[str, torch.Tensor]:
    # Accept the common checkpoint wrappers {"state_dict": ...} / {"model_state_dict": ...}.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise EngineError(
            JobErrorCode.UNSUPPORTED_MODEL,
            f"expected a state_dict (a mapping of parameter names to tensors), got "
            f"{type(obj).__name__}",
        )
    return dict(obj)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # SafetensorError, or a header that is not valid JSON
        raise EngineError(
            JobErrorCode.INVALID_MODEL, f"not a readable safetensors file: {exc}"
        ) from exc


def _decode_compact(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    try:
        return sparse_layout.decode(tensors)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise EngineError(JobErrorCode.INVALID_MODEL, f"not a valid compact file: {exc}") from exc


def _decode_compressed(path: Path, settings: Settings) -> dict[str, torch.Tensor]:
    try:
        return compressed.decode(path.read_bytes(), limits_from(settings))
    except UploadRejected as exc:
        raise EngineError(exc.job_code, exc.message) from exc


def _into_architecture(tensors: dict[str, torch.Tensor], architecture: str | None) -> nn.Module:
    if architecture is None:
        raise EngineError(
            JobErrorCode.ARCHITECTURE_REQUIRED,
            "a state_dict or safetensors upload needs the spec's `architecture` (one of "
            f"{', '.join(sorted(registry.BUILDERS))}); TorchScript archives need none",
        )
    if architecture not in registry.BUILDERS:
        raise EngineError(
            JobErrorCode.UNKNOWN_ARCHITECTURE,
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(registry.BUILDERS))}",
        )
    module = registry.build(architecture)
    _check_keys(module.state_dict(), tensors, architecture)
    with torch.no_grad():
        module.load_state_dict(tensors, strict=True)
    return module


def _check_keys(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], architecture: str
) -> None:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [
        f"{k}: got {list(given[k].shape)}, expected {list(expected[k].shape)}"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {', '.join(items)}"
            for label, items in (
                ("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)
            )
            if items
        ]
        raise EngineError(
            JobErrorCode.ARCHITECTURE_MISMATCH,
            f"the state_dict does not fit {architecture!r}: " + "; ".join(parts),
        )
