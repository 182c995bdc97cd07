"""The compact sparse download (sparse_safetensors): exact round trip, its size, the three
documented lines, and the loader taking it back as an upload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from core.jobs.formats import ModelFormat
from core.settings import Settings
from worker.engine import loading, registry, saving
from worker.engine import sparse_layout as compact


def sparse_mlp(amount: float = 0.9) -> torch.nn.Module:
    """The 784-256-128-10 MLP with the smallest ``amount`` of its weights zeroed (global)."""
    torch.manual_seed(0)
    model = registry.build("mnist_mlp")
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    magnitudes = torch.cat([w.detach().abs().reshape(-1) for w in weights])
    threshold = magnitudes.kthvalue(int(amount * magnitudes.numel())).values
    with torch.no_grad():
        for w in weights:
            w[w.abs() <= threshold] = 0
    return model


def test_pack_bits_is_lsb_first_with_zero_padding() -> None:
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)  # 10 -> 2 bytes
    packed = compact.pack_bits(mask)
    assert packed.tolist() == [0b1000_0001, 0b0000_0011]
    assert torch.equal(compact.unpack_bits(packed, 10), mask)


def test_round_trip_is_exact() -> None:
    state = {"w": torch.tensor([[0.0, -0.0, 1.5], [0.0, 0.0, -2.0], [0.0, 0.0, 0.0]]),
             "b": torch.tensor([1.0, 2.0, 3.0]), "n": torch.tensor(7)}
    encoded = compact.encode(state)
    assert set(encoded) == {"w", "w@mask", "w@shape", "b", "n"}  # b and n: not smaller
    assert encoded["w"].tolist() == [1.5, -2.0]  # -0.0 is a zero: not stored
    decoded = compact.decode(encoded)
    for name, tensor in state.items():
        assert decoded[name].dtype == tensor.dtype
        assert torch.equal(decoded[name], tensor)
    assert not torch.signbit(decoded["w"][0, 1])  # it comes back as +0.0


def test_ninety_percent_sparse_mlp_is_at_most_a_quarter_of_the_dense_file(
    tmp_path: Path,
) -> None:
    model = sparse_mlp(0.9)
    outputs = saving.save_all(model, ModelFormat.SAFETENSORS, tmp_path)
    dense = outputs["state_dict"].stat().st_size
    small = outputs["sparse_safetensors"].stat().st_size
    assert small <= 0.25 * dense, (small, dense)
    assert small <= 0.14 * dense  # bitmask (1/32) + 10% values + headers: ~13.3%
    state = load_file(str(outputs["sparse_safetensors"]))
    assert "fc1.weight@mask" in state and state["fc1.bias"].shape == (256,)


DOCUMENTED_LINES = '''
import torch, safetensors.torch as st
f = st.load_file("model.sparse.safetensors")
sd = {k: torch.zeros(8 * len(f[k + "@mask"]), dtype=v.dtype).masked_scatter_(((f[k + "@mask"][:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).bool().flatten(), v)[: f[k + "@shape"].prod()].view(f[k + "@shape"].tolist()) if k + "@mask" in f else v for k, v in f.items() if "@" not in k}
'''  # noqa: E501 - verbatim from docs/compact-and-cost.md


def test_the_three_documented_lines_give_back_the_dense_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = (Path(__file__).resolve().parents[3] / "docs" / "compact-and-cost.md").read_text()
    lines = DOCUMENTED_LINES.strip().splitlines()
    assert len(lines) == 3 and all(line in page for line in lines)
    model = sparse_mlp(0.9)
    compact.save(saving.cpu_state_dict(model), tmp_path / "model.sparse.safetensors")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}  # the lines run as written, with nothing of ours in scope
    exec(DOCUMENTED_LINES, namespace)  # noqa: S102 - our own documented snippet
    sd = namespace["sd"]
    assert set(sd) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert sd[name].shape == tensor.shape and torch.equal(sd[name], tensor), name
    fresh = registry.build("mnist_mlp")
    fresh.load_state_dict(sd)  # and they load into the user's module as they are


def test_loader_takes_a_compact_upload_back(tmp_path: Path) -> None:
    model = sparse_mlp(0.8)
    path = tmp_path / "up.safetensors"
    compact.save(saving.cpu_state_dict(model), path)
    loaded = loading.load_model(path, "mnist_mlp", Settings())
    assert loaded.format == "sparse_safetensors"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], tensor)


def test_decode_refuses_a_mask_that_disagrees_with_the_values() -> None:
    encoded = compact.encode({"w": torch.tensor([[0.0, 1.0], [0.0, 0.0]] * 8)})
    encoded["w"] = encoded["w"][:-1]
    with pytest.raises(ValueError, match="mask and values disagree"):
        compact.decode(encoded)
