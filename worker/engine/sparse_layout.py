"""The compact sparse download (``sparse_safetensors``): bitmask + non-zero values.

The layout is described (and checked at the door, without torch) in ``core/uploads/compact.py``.
Plain PyTorch reads it back to the exact dense tensors in three lines (README, docs/engine.md)::

    import torch, safetensors.torch as st
    f = st.load_file("model.sparse.safetensors")
    sd = {k: torch.zeros(8 * len(f[k + "@mask"]), dtype=v.dtype).masked_scatter_(((f[k + "@mask"][:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).bool().flatten(), v)[: f[k + "@shape"].prod()].view(f[k + "@shape"].tolist()) if k + "@mask" in f else v for k, v in f.items() if "@" not in k}

Why a bitmask and not indices: at the 50-99% sparsity pruning produces, one bit per element
plus the values is smaller than an int32 index per value (benchmarks/compact_formats.py), a
mask cannot point out of range, and safetensors never unpickles anything.
"""  # noqa: E501 - the three lines are the documented ones, verbatim

from __future__ import annotations

from pathlib import Path

import torch

from core.uploads.compact import LAYOUT, LAYOUT_KEY, MASK_SUFFIX, SHAPE_SUFFIX

_BIT = torch.arange(8, dtype=torch.uint8)  # bit i of a byte holds element 8 * byte + i


def _nonzero_mask(tensor: torch.Tensor) -> torch.Tensor:
    # By value: pruning multiplies negative weights by 0 and leaves -0.0, which must not cost
    # a stored value; it comes back as +0.0 (equal as a number: torch.equal holds). NaN != 0.
    return tensor.reshape(-1) != 0


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(n,) bool -> (ceil(n / 8),) uint8, least significant bit first, padding bits 0."""
    padded = torch.zeros(-(-mask.numel() // 8) * 8, dtype=torch.uint8)
    padded[: mask.numel()] = mask
    return (padded.view(-1, 8) << _BIT).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """(ceil(n / 8),) uint8 -> (n,) bool."""
    return ((packed[:, None] >> _BIT) & 1).bool().reshape(-1)[:numel]


def compact_bytes(tensor: torch.Tensor) -> int:
    """Data bytes of ``tensor`` in the compact layout (values + mask + shape)."""
    nonzero = int(_nonzero_mask(tensor).sum())
    return nonzero * tensor.element_size() + -(-tensor.numel() // 8) + 8 * tensor.dim()


def encode(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors that come out smaller as bitmask + values; the rest as they are.
    Tensors must be on the CPU."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if "@" in name:
            raise ValueError(f"parameter name {name!r} holds '@', which the layout reserves")
        dense_bytes = tensor.numel() * tensor.element_size()
        if not tensor.is_floating_point() or compact_bytes(tensor) >= dense_bytes:
            out[name] = tensor.contiguous()
            continue
        mask = _nonzero_mask(tensor)
        out[name] = tensor.reshape(-1)[mask].contiguous()
        out[name + MASK_SUFFIX] = pack_bits(mask)
        out[name + SHAPE_SUFFIX] = torch.tensor(tensor.shape, dtype=torch.int64)
    return out


def decode(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense state_dict back. Raises ValueError when the pieces do not fit (the door
    checks the same; this guards callers that skip it)."""
    dense: dict[str, torch.Tensor] = {}
    for name, values in tensors.items():
        if "@" in name:
            continue
        mask = tensors.get(name + MASK_SUFFIX)
        if mask is None:
            dense[name] = values
            continue
        shape = tensors[name + SHAPE_SUFFIX].tolist()
        numel = 1
        for size in shape:
            numel *= size
        if mask.dtype != torch.uint8 or mask.numel() != -(-numel // 8):
            raise ValueError(f"compact tensor {name!r}: the mask does not cover shape {shape}")
        bits = unpack_bits(mask, numel)
        if int(bits.sum()) != values.numel():
            raise ValueError(f"compact tensor {name!r}: mask and values disagree in count")
        full = torch.zeros(numel, dtype=values.dtype)
        full[bits] = values
        dense[name] = full.view(shape)
    return dense


def save(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(encode(state), str(path), metadata={"format": "pt", LAYOUT_KEY: LAYOUT})

