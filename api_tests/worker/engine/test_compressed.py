"""The compressed download: encode -> decode is bit-exact for every shape, bits value,
encoding and structure; the chosen streams are the smallest; the loader takes it back."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from client.decode import decode_bytes, safetensors_bytes
from core.jobs.formats import ModelFormat
from core.settings import Settings
from core.uploads import check_upload
from core.uploads.compressed import PREFIX_BYTES
from worker.engine import compressed, quantize
from worker.engine.loading import load_model
from worker.engine.quantize import QuantizedTensor

SHAPES = [(0,), (1,), (7,), (3, 5), (2, 3, 4, 5), (40, 300), (8, 1, 5, 5)]


def _sparse(shape: tuple[int, ...], density: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    return weight * (torch.rand(shape, generator=generator) < density)


def _codebook(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, QuantizedTensor]:
    flat = weight.reshape(-1)
    where = torch.nonzero(flat).squeeze(1)
    out = torch.zeros_like(flat)
    if where.numel() == 0:
        return out.reshape(weight.shape), QuantizedTensor("w", "codebook", bits,
                                                          torch.zeros(2 ** bits))
    codebook, codes = quantize.fit_codebook(flat[where], bits)
    out[where] = codebook[codes]
    return out.reshape(weight.shape), QuantizedTensor("w", "codebook", bits, codebook)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and (
        a.contiguous().numpy().tobytes() == b.contiguous().numpy().tobytes())


def _header(data: bytes) -> list[dict[str, object]]:
    stored, _ = struct.unpack("<II", data[8:PREFIX_BYTES])
    rows: list[dict[str, object]] = json.loads(zlib.decompress(
        data[PREFIX_BYTES:PREFIX_BYTES + stored]))["tensors"]
    return rows


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("density", [0.05, 0.6])
def test_codebook_round_trip_is_bit_exact(shape: tuple[int, ...], bits: int,
                                          density: float) -> None:
    weight, table = _codebook(_sparse(shape, density, bits), bits)
    back = compressed.decode(compressed.encode({"w": weight}, {"w": table}))
    assert _bits_equal(back["w"], weight)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] > 0])
@pytest.mark.parametrize("bits", range(2, 9))
def test_linear_round_trip_is_bit_exact(shape: tuple[int, ...], bits: int) -> None:
    weight, scales = quantize.linear_quantize(_sparse(shape, 0.3, bits), bits)
    table = QuantizedTensor("w", "linear", bits, scales)
    back = compressed.decode(compressed.encode({"w": weight}, {"w": table}))
    assert _bits_equal(back["w"], weight)


@pytest.mark.parametrize("tensor", [
    torch.randn(4, 6), _sparse((50, 40), 0.1, 1), torch.arange(12).reshape(3, 4),
    torch.tensor([True, False, True]), torch.randn(5, dtype=torch.float64),
    torch.randn(3, 3).half(), torch.zeros(0, 4), torch.tensor(3.5),
], ids=["dense", "sparse", "int64", "bool", "float64", "float16", "empty", "scalar"])
def test_unquantised_tensors_round_trip_equal(tensor: torch.Tensor) -> None:
    # Equal as numbers and dtype: a pruned -0.0 is not worth a stored value and comes back
    # +0.0, as in sparse_safetensors (quantised tensors hold none: bit-exact above).
    back = compressed.decode(compressed.encode({"t": tensor}))
    assert (back["t"].dtype, torch.equal(back["t"], tensor)) == (tensor.dtype, True)


def test_gaps_hand_encoded() -> None:
    # positions 0, 1, 300: gaps-1 = 0, 0, 298 = 255 + 43 -> bytes 0, 0, 255, 43
    assert compressed.gaps(np.array([0, 1, 300])) == bytes([0, 0, 255, 43])


def test_codes_packed_least_significant_bit_first() -> None:
    # codes 5 (101), 3 (011) at 3 bits: bit stream 1,0,1, 1,1,0 -> 0b011101 = 29
    assert compressed.pack_codes(np.array([5, 3]), 3) == bytes([29])


def test_the_smallest_candidate_is_chosen() -> None:
    weight, table = _codebook(_sparse((300, 784), 0.05, 0), 6)
    flat = weight.reshape(-1).numpy()
    positions = np.flatnonzero(flat)
    codes = np.searchsorted(table.table.numpy(), flat[positions])  # the codebook is sorted
    used = np.unique(codes)  # only the centroids in use are stored, renumbered
    tail = table.table.numpy()[used].astype("<f4").tobytes()
    codes = np.searchsorted(used, codes)
    frames = [len(compressed._frame(s + c + tail))
              for s in (compressed.bitmask(positions, flat.size), compressed.gaps(positions))
              for c in (compressed.pack_codes(codes, 6), codes.astype(np.uint8).tobytes())]
    assert _header(compressed.encode({"w": weight}, {"w": table}))[0]["frame"] == min(frames)


def test_only_the_centroids_in_use_are_stored() -> None:
    weight = torch.tensor([0.0, 2.0, 0.0, 8.0, 8.0, 2.0])  # entries 1 and 3 of 4
    table = QuantizedTensor("w", "codebook", 2, torch.tensor([1.0, 2.0, 4.0, 8.0]))
    data = compressed.encode({"w": weight}, {"w": table})
    assert (_header(data)[0]["sizes"][2], compressed.decode(data)["w"].tolist()) == (
        8, weight.tolist())


def test_compressed_upload_loads_into_its_architecture(tmp_path: Path) -> None:
    from worker.engine import registry
    model = registry.build("mnist_mlp")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = tmp_path / "model.prz"
    compressed.save(state, path)
    assert check_upload(path, Settings()) is ModelFormat.COMPRESSED
    loaded = load_model(path, "mnist_mlp", Settings())
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in state.items())


def test_decoded_safetensors_reads_back_in_safetensors() -> None:
    from safetensors.torch import load

    weight, table = _codebook(_sparse((30, 20), 0.2, 3), 5)
    state = {"w": weight, "b": torch.arange(3)}
    tensors = decode_bytes(compressed.encode(state, {"w": table}))
    back = load(safetensors_bytes(tensors))
    assert all(_bits_equal(back[k], v) for k, v in state.items())
