"""N:M semi-structured sparsity: keep the N largest of every M consecutive input weights.

"Input dimension" is the row of the weight seen as a matrix: a Linear weight (out, in) is
grouped along ``in``; a Conv weight (out, in, kh, kw) along its flattened ``in*kh*kw`` row, the
order in which im2col lays it out. When the row length is not a multiple of M, the last,
partial group of r < M weights keeps ``min(N, r)`` of them (the same "at most N kept per M"
rule, applied to a shorter group); such a tensor is never eligible for the GPU kernels, whose
shape rules ask for whole groups. Ties are broken by position (lower index kept), so the
pattern is deterministic.

GPU kernels: ``torch.sparse.to_sparse_semi_structured`` accepts a 2-D, contiguous CUDA tensor
in float16/bfloat16 with the 2:4 pattern, its rows a multiple of 32 and its columns a multiple
of 64 (CUTLASS backend, torch/sparse/semi_structured.py). On a CPU there is no such kernel and
no speed-up is claimed; the saved model keeps dense float32 weights with the zeros in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KERNEL_PATTERN = (2, 4)
KERNEL_MIN_ROWS = 32  # CUTLASS float16/bfloat16 sparse_min_rows
KERNEL_MIN_COLS = 64  # CUTLASS float16/bfloat16 sparse_min_cols


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(tensor.size(0), -1) if tensor.dim() > 1 else \
        tensor.detach().reshape(1, -1)


def nm_mask(tensor: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Float keep-mask shaped like ``tensor``: per row, in each group of ``m`` consecutive
    weights the ``n`` largest magnitudes are kept (``min(n, r)`` in a last group of r < m)."""
    rows = _rows(tensor)
    width = rows.size(1)
    full = width - width % m
    keep = torch.zeros_like(rows, dtype=torch.bool)
    if full:
        groups = rows[:, :full].abs().reshape(rows.size(0), -1, m)
        keep[:, :full] = _top_n(groups, n).reshape(rows.size(0), full)
    if full < width:
        tail = rows[:, full:].abs().unsqueeze(1)  # (rows, 1, r)
        keep[:, full:] = _top_n(tail, min(n, width - full)).reshape(rows.size(0), -1)
    return keep.to(tensor.dtype).reshape(tensor.shape)


def _top_n(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean, shaped like ``groups`` (..., g): the ``n`` largest of each last-dim group.
    A stable descending sort keeps the lower index first among equal magnitudes."""
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(groups, dtype=torch.bool)
    return keep.scatter_(-1, order, True)


def pattern_holds(tensor: torch.Tensor, n: int, m: int) -> bool:
    """Whether every full group of ``m`` consecutive row weights has at most ``n`` non-zeros
    (and a last partial group of r weights at most ``min(n, r)``)."""
    rows = _rows(tensor)
    width = rows.size(1)
    full = width - width % m
    nonzero = rows != 0
    if full and bool((nonzero[:, :full].reshape(rows.size(0), -1, m).sum(-1) > n).any()):
        return False
    tail = nonzero[:, full:].sum(-1)
    return full == width or int(tail.max()) <= min(n, width - full)


@dataclass(frozen=True)
class Eligibility:
    eligible: bool
    note: str


def kernel_eligibility(tensor: torch.Tensor, n: int, m: int) -> Eligibility:
    """Whether torch.sparse.to_sparse_semi_structured would take this weight on a GPU in
    float16/bfloat16 (its shape and pattern rules; device and dtype are the user's to set)."""
    shape = list(tensor.shape)
    gpu = "; needs CUDA and float16/bfloat16 at inference, no CPU speed-up"
    if (n, m) != KERNEL_PATTERN:
        return Eligibility(False, f"the GPU kernels run 2:4 only, not {n}:{m}")
    if tensor.dim() != 2:
        return Eligibility(False, f"the GPU kernels take 2-D weights; this one is {shape}")
    rows, cols = shape
    if rows % KERNEL_MIN_ROWS or cols % KERNEL_MIN_COLS:
        return Eligibility(False, f"shape {shape}: rows must be a multiple of "
                           f"{KERNEL_MIN_ROWS} and columns of {KERNEL_MIN_COLS}")
    return Eligibility(True, f"shape {shape} fits to_sparse_semi_structured{gpu}")
