"""``pruner decode`` / ``PrunerClient.decode``: a compressed download to safetensors in a
process that never imports torch, equal to the engine's tensors bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from client.decode import decode_bytes
from worker.engine import compressed, quantize
from worker.engine.quantize import QuantizedTensor

ROOT = Path(__file__).resolve().parents[2]


def _state() -> tuple[dict[str, torch.Tensor], dict[str, QuantizedTensor]]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(20, 30, generator=generator)
    weight *= torch.rand(20, 30, generator=generator) < 0.2
    where = torch.nonzero(weight.reshape(-1)).squeeze(1)
    codebook, codes = quantize.fit_codebook(weight.reshape(-1)[where], 5)
    shared = torch.zeros(600)
    shared[where] = codebook[codes]
    scaled, scales = quantize.linear_quantize(weight, 8)
    state = {"a.weight": shared.reshape(20, 30), "b.weight": scaled, "a.bias": torch.randn(20),
             "steps": torch.tensor(7)}
    tables = {"a.weight": QuantizedTensor("a.weight", "codebook", 5, codebook),
              "b.weight": QuantizedTensor("b.weight", "linear", 8, scales)}
    return state, tables


def test_pruner_decode_without_torch(tmp_path: Path) -> None:
    state, tables = _state()
    source = tmp_path / "job-pruned.prz"
    compressed.save(state, source, tables)
    target = tmp_path / "model.safetensors"
    code = ("import sys; from client.cli import main; "
            f"rc = main(['decode', {str(source)!r}, '-o', {str(target)!r}]); "
            "sys.exit(rc or (3 if 'torch' in sys.modules else 0))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True)
    assert (run.returncode, run.stdout.strip()) == (0, str(target))
    back = load_file(str(target))
    assert all(back[k].numpy().tobytes() == v.numpy().tobytes() for k, v in state.items())


def test_pruner_decode_refuses_a_broken_file(tmp_path: Path) -> None:
    state, tables = _state()
    source = tmp_path / "job-pruned.prz"
    source.write_bytes(compressed.encode(state, tables)[:-5])
    run = subprocess.run([sys.executable, "-m", "client", "decode", str(source)], cwd=ROOT,
                         capture_output=True, text=True)
    assert (run.returncode, "frames end at byte" in run.stderr) == (2, True)


def _documented_decoder() -> Any:
    page = (ROOT / "docs" / "deep-compression.md").read_text()
    code = page.split("### Reading it without torch", 1)[1].split("```python\n", 1)[1]
    namespace: dict[str, Any] = {}
    exec(code.split("```", 1)[0], namespace)  # noqa: S102 - our own documented lines
    return namespace["decode"]


def test_the_documented_lines_decode_every_encoding() -> None:
    state, tables = _state()
    state["sparse"] = state["a.weight"] * 3.0  # unquantised: the sparse encoding
    state["flags"] = torch.tensor([True, False])
    data = compressed.encode(state, tables)
    decoded = _documented_decoder()(data)
    reference = decode_bytes(data)
    assert {k: v.tobytes() for k, v in decoded.items()} == {
        k: v.tobytes() for k, v in reference.items()}
