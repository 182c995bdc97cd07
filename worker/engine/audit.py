"""Audits of a loaded upload, run before any of its code executes. (Owner: issue 4.)

PLACEHOLDER: accepts everything today; issue 4 fills in the TorchScript op allow-list and the
tensor checks (dtypes, NaN/Inf, size caps).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from core.settings import Settings


def audit_torchscript(module: torch.jit.ScriptModule) -> None:
    """Raise EngineError(UNSAFE_MODEL) naming each operator outside the allow-list."""
    return None


def check_tensors(tensors: Mapping[str, torch.Tensor], settings: Settings) -> None:
    """Raise EngineError for disallowed dtypes, NaN/Inf values or tensors over the caps."""
    return None
