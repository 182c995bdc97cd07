"""Format detection and loading: TorchScript, torch.save state_dicts, safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from core.jobs.spec import JobSpec
from core.settings import Settings
from worker.engine import registry, scripting
from worker.engine.loading import load_model
from worker.engine.pipeline import run_job


def _state(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return registry.build(name).state_dict()


def test_formats_are_told_apart(engine_settings: Settings, tmp_path: Path) -> None:
    state = _state("lenet_300_100")
    torch.save(state, tmp_path / "sd.pt")
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pt")
    save_file(state, str(tmp_path / "w.safetensors"))
    model = registry.build("lenet_300_100")
    model.load_state_dict(state)
    torch.jit.save(scripting.script(model), str(tmp_path / "ts.pt"))
    loaded = {
        f: load_model(tmp_path / f, "lenet_300_100", engine_settings)
        for f in ("sd.pt", "ckpt.pt", "w.safetensors", "ts.pt")
    }
    assert {f: m.format for f, m in loaded.items()} == {
        "sd.pt": "state_dict", "ckpt.pt": "state_dict", "w.safetensors": "safetensors",
        "ts.pt": "torchscript",
    }
    for m in loaded.values():
        assert all(torch.equal(m.module.state_dict()[k], v) for k, v in state.items())
    assert isinstance(loaded["ts.pt"].module, torch.jit.ScriptModule)


def test_safetensors_in_state_dict_out(engine_settings: Settings, tmp_path: Path) -> None:
    save_file(_state("lenet_300_100"), str(tmp_path / "w.safetensors"))
    spec = JobSpec.model_validate({
        "architecture": "lenet_300_100", "device": "cpu", "output_format": "state_dict",
        "finetune": {"epochs": 0},
        "pruning": {"scope": "layerwise", "amount": 0.5, "overrides": {"fc3.*": 100}},
    })
    result = run_job(tmp_path / "w.safetensors", spec, tmp_path / "out", settings=engine_settings)
    report = result.report
    assert (report.input.format, report.output.format, result.primary) == (
        "safetensors", "state_dict", "state_dict"
    )
    assert [t.zeros for t in report.tensors] == [784 * 150, 300 * 50, 100]
    state = torch.load(result.outputs["state_dict"], weights_only=True)
    assert [int((state[f"fc{i}.weight"] == 0).sum()) for i in (1, 2, 3)] == [117600, 15000, 100]
    assert report.output.compressed_bytes is not None
    assert report.output.compressed_bytes < report.output.bytes
