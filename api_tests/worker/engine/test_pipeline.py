"""run_job end to end on real MNIST: the reference recipe, structured conv pruning, saved files
that reproduce the report with plain PyTorch, determinism, progress, output formats, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from api_tests.models import Split, UserMLP, accuracy
from api_tests.support.stacks import TrainedMLP
from core.jobs.report import Progress, Report
from core.jobs.spec import JobSpec
from core.settings import Settings
from worker.engine import cli, registry, scripting
from worker.engine.pipeline import run_job

RECIPE = {  # the reference recipe: 30% global L1 over the Linear weights, 2 epochs of Adam
    "pruning": {"method": "l1_unstructured", "scope": "global", "amount": 0.3},
    "finetune": {"epochs": 2, "optimizer": "adam", "lr": 1e-3, "batch_size": 64},
    "device": "cpu",
}


def _zeros_by_name(state: dict[str, torch.Tensor]) -> dict[str, int]:
    return {k: int((v == 0).sum()) for k, v in state.items()}


def _check_recipe_report(report: Report) -> None:
    assert [(t.name, t.layer_kind, t.elements) for t in report.tensors] == [
        ("fc1.weight", "Linear", 200704), ("fc2.weight", "Linear", 32768),
        ("fc3.weight", "Linear", 1280),
    ]
    assert report.targeted.elements == 234752
    assert report.targeted.zeros == round(0.3 * 234752) == 70426
    assert f"{report.targeted.sparsity:.1%}" == "30.0%"
    assert report.all_parameters.elements == 235146 and report.all_parameters.zeros == 70426
    assert report.accuracy.after_finetune.accuracy >= 0.97
    assert report.accuracy.delta_total == pytest.approx(
        report.accuracy.after_finetune.accuracy - report.accuracy.before.accuracy
    )
    assert set(report.timings_s) >= {"load", "evaluate", "prune", "finetune", "save", "total"}
    assert report.device == "cpu" and report.torch_version == torch.__version__


@pytest.mark.slow
def test_reference_recipe_torchscript(
    trained_mlp: TrainedMLP, mnist_test: Split, engine_settings: Settings, tmp_path: Path
) -> None:
    result = run_job(trained_mlp.torchscript, JobSpec.model_validate(RECIPE), tmp_path,
                     settings=engine_settings)
    report = result.report
    _check_recipe_report(report)
    assert result.primary == "torchscript" and report.input.format == "torchscript"
    assert report.output.bytes == result.outputs["torchscript"].stat().st_size
    reloaded = torch.jit.load(str(result.outputs["torchscript"]))
    zeros = _zeros_by_name(dict(reloaded.state_dict()))
    assert {t.name: t.zeros for t in report.tensors} == {
        k: v for k, v in zeros.items() if k.endswith("weight")
    }
    assert not any("mask" in k or "orig" in k for k in zeros)  # masks folded in
    measured = accuracy(reloaded, mnist_test)  # as a user computes it, not the engine's code
    assert measured == pytest.approx(report.accuracy.after_finetune.accuracy, abs=1e-4)


@pytest.mark.slow
def test_reference_recipe_state_dict(
    trained_mlp: TrainedMLP, mnist_test: Split, engine_settings: Settings, tmp_path: Path
) -> None:
    spec = JobSpec.model_validate({**RECIPE, "architecture": "mnist_mlp"})
    result = run_job(trained_mlp.state_dict, spec, tmp_path, settings=engine_settings)
    report = result.report
    _check_recipe_report(report)
    assert result.primary == "state_dict" and set(result.outputs) == {
        "torchscript", "state_dict", "safetensors", "sparse_safetensors", "pt2",
        "compressed"
    }
    # The user's own class loads the returned state_dict as is (weights_only).
    state = torch.load(result.outputs["state_dict"], weights_only=True)
    model = UserMLP()
    model.load_state_dict(state)
    expected = {t.name: t.zeros for t in report.tensors}
    assert {k: v for k, v in _zeros_by_name(state).items() if k in expected} == expected
    measured = accuracy(model, mnist_test)
    assert measured == pytest.approx(report.accuracy.after_finetune.accuracy, abs=1e-4)
    # Every other format holds the same weights.
    safetensors = load_file(result.outputs["safetensors"])
    scripted = torch.jit.load(str(result.outputs["torchscript"])).state_dict()
    for name, tensor in state.items():
        assert torch.equal(safetensors[name], tensor) and torch.equal(scripted[name], tensor)


@pytest.mark.slow
def test_same_input_spec_and_seed_give_same_result(
    trained_mlp: TrainedMLP, engine_settings: Settings, tmp_path: Path
) -> None:
    spec = JobSpec.model_validate({
        "architecture": "mnist_mlp", "device": "cpu", "seed": 11,
        "pruning": {"method": "random_unstructured", "scope": "layerwise", "amount": 0.5},
        "finetune": {"epochs": 1, "optimizer": "sgd", "lr": 0.01, "batch_size": 128},
    })
    progress: list[Progress] = []
    first = run_job(trained_mlp.state_dict, spec, tmp_path / "a", settings=engine_settings,
                    on_progress=progress.append)
    second = run_job(trained_mlp.state_dict, spec, tmp_path / "b", settings=engine_settings)
    a = torch.load(first.outputs["state_dict"], weights_only=True)
    b = torch.load(second.outputs["state_dict"], weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.report.tensors == second.report.tensors
    assert first.report.accuracy == second.report.accuracy
    assert [t.zeros for t in first.report.tensors] == [100352, 16384, 640]
    # Progress: phase changes, a report every 100 steps and one per epoch (469 steps: all
    # 60000 train images, since this job decides nothing and so holds none out).
    phases = [p.phase for p in progress if p.step is None]
    assert phases == ["loading", "evaluating", "pruning", "evaluating", "finetuning",
                      "evaluating", "saving", "done"]
    steps = [(p.epoch, p.step, p.steps) for p in progress if p.step is not None]
    assert steps == [(1, s, 469) for s in (100, 200, 300, 400, 469)]


@pytest.mark.slow
def test_l2_structured_half_of_conv_channels(engine_settings: Settings, tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "lenet5.pt"
    torch.save(registry.build("lenet5").state_dict(), path)
    spec = JobSpec.model_validate({
        "architecture": "lenet5", "device": "cpu",
        "pruning": {"method": "ln_structured", "n": 2, "dim": 0, "amount": 0.5,
                    "include": ["conv*.weight"]},
        "finetune": {"epochs": 1, "batch_size": 256},
    })
    result = run_job(path, spec, tmp_path / "out", settings=engine_settings)
    assert result.report.spec.pruning.scope == "layerwise"  # structured is layerwise
    assert [(t.name, t.slices, t.slices_zeroed, t.zeros) for t in result.report.tensors] == [
        ("conv1.weight", 6, 3, 3 * 25), ("conv2.weight", 16, 8, 8 * 150)
    ]
    state = torch.load(result.outputs["state_dict"], weights_only=True)
    for name, channels in (("conv1.weight", 6), ("conv2.weight", 16)):
        per_channel = state[name].reshape(channels, -1)
        zero_channels = (per_channel == 0).all(dim=1)
        assert int(zero_channels.sum()) == channels // 2
        assert int((per_channel[~zero_channels] == 0).sum()) == 0  # the rest untouched


@pytest.mark.slow
def test_torchscript_conv_bn_structured_without_finetuning(
    engine_settings: Settings, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    path = tmp_path / "cnn.pt"
    torch.jit.save(scripting.script(registry.build("small_cnn_bn").eval()), str(path))
    spec = JobSpec.model_validate({
        "device": "cpu", "output_format": "safetensors", "finetune": {"epochs": 0},
        "pruning": {"method": "random_structured", "amount": 16, "include": ["conv2.weight"]},
    })
    result = run_job(path, spec, tmp_path / "out", settings=engine_settings)
    assert result.primary == "safetensors" and result.report.output.format == "safetensors"
    [row] = result.report.tensors
    assert (row.name, row.layer_kind, row.slices_zeroed, row.zeros) == (
        "conv2.weight", "Conv2d", 16, 16 * 32 * 9
    )
    weights = load_file(result.outputs["safetensors"])
    assert int((weights["conv2.weight"].reshape(64, -1) == 0).all(dim=1).sum()) == 16
    assert result.report.accuracy.after_finetune == result.report.accuracy.after_pruning


@pytest.mark.slow
def test_cli(trained_mlp: TrainedMLP, engine_settings: Settings, tmp_path: Path,
             capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"pruning": {"amount": 0.9}, "finetune": {"epochs": 0}}))
    code = cli.main([
        str(trained_mlp.state_dict), "--spec", str(spec_file), "--architecture", "mnist_mlp",
        "--amount", "0.5", "--scope", "layerwise", "--device", "cpu", "--output-format",
        "torchscript", "-o", str(tmp_path / "out"), "--mnist-root",
        str(engine_settings.mnist_root), "--html",
    ])
    assert code == 0
    report = Report.model_validate_json((tmp_path / "out" / "report.json").read_text())
    assert report.spec.pruning.amount == 0.5 and report.spec.pruning.scope == "layerwise"
    assert [t.zeros for t in report.tensors] == [100352, 16384, 640]
    assert (tmp_path / "out" / "model.torchscript.pt").exists()
    assert "50.0% of 234752" in capsys.readouterr().out
    page = (tmp_path / "out" / "report.html").read_text()  # --html without a path
    assert page.count('<g class="bar"') == 3 + 3 + len(report.timings_s) - 1
    assert all(f'data-label="{t.name}" data-value="{t.sparsity}"' in page
               for t in report.tensors)
    assert cli.main([str(trained_mlp.state_dict), "-o", str(tmp_path / "x"),
                     "--mnist-root", str(engine_settings.mnist_root)]) == 2  # no architecture
    assert "architecture_required" in capsys.readouterr().err
