"""run_job with pruning.shrink: the files that come back load with plain PyTorch, hold the
report's shapes and reproduce its accuracy; fine-tuning runs on the smaller model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from api_tests.models import accuracy, assert_reproduces
from api_tests.worker.engine.shrink import models
from core.jobs.error_codes import JobErrorCode
from core.jobs.spec import JobSpec
from core.settings import Settings
from worker.engine import cli, registry, scripting
from worker.engine.errors import EngineError
from worker.engine.pipeline import run_job

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SHRINK = {"method": "ln_structured", "dim": 0, "amount": 0.5, "shrink": True}


def _check_files(result: Any, mnist_test: tuple[Any, Any]) -> None:
    report = result.report
    expected = {c.name: c.shape_after for c in report.shrink.tensors}
    scripted = torch.jit.load(str(result.outputs["torchscript"])).eval()  # plain PyTorch
    weights = load_file(result.outputs["safetensors"])
    for name, shape in expected.items():
        assert list(scripted.state_dict()[name].shape) == shape, name
        assert list(weights[name].shape) == shape, name
    stated = report.accuracy.after_finetune.accuracy
    assert_reproduces(accuracy(scripted, mnist_test), stated, mnist_test)


@pytest.mark.slow  # evaluates on the MNIST test split
@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_torchscript_residual_upload_is_shrunk(
    kind: str, engine_settings: Settings, tmp_path: Path, mnist_test: tuple[Any, Any]
) -> None:
    net = models.randomize_batchnorm(models.ResidualNet())
    module = scripting.script(net) if kind == "scripted" else torch.jit.trace(
        net, torch.zeros(2, 1, 28, 28))
    path = tmp_path / "residual.pt"
    torch.jit.save(module, str(path))
    spec = JobSpec.model_validate({"device": "cpu", "pruning": SHRINK,
                                   "finetune": {"epochs": 0}})
    result = run_job(path, spec, tmp_path / "out", settings=engine_settings)
    shrink = result.report.shrink
    assert shrink is not None and shrink.architecture is None
    assert shrink.widths["stem"] == 4 and shrink.widths["block1.conv1"] == 4
    assert shrink.parameters_after == result.report.all_parameters.elements < \
        shrink.parameters_before
    rows = {r.name: (r.shape_before, r.shape_after, r.slices_zeroed) for r in result.report.tensors}
    assert rows["stem.weight"] == ([8, 1, 3, 3], [4, 1, 3, 3], 4)
    assert rows["fc.weight"] == ([10, 392], [10, 196], 0)  # the head keeps its outputs
    _check_files(result, mnist_test)


@pytest.mark.slow  # evaluates on the MNIST test split
def test_traced_shuffle_with_constant_sizes_and_a_group_override(
    engine_settings: Settings, tmp_path: Path, mnist_test: tuple[Any, Any]
) -> None:
    """A traced channel shuffle whose channel counts are baked in (made to follow by the
    rewrite), shrunk to an override naming the group: 8 channels in 4 coupled pairs, 3 of
    the 4 pairs go; the archive that comes back runs under plain torch."""
    module = torch.jit.trace(models.randomize_batchnorm(models.FixedShuffle()),
                             torch.zeros(2, 1, 28, 28))
    path = tmp_path / "shuffle.pt"
    torch.jit.save(module, str(path))
    spec = JobSpec.model_validate({"device": "cpu", "finetune": {"epochs": 0},
                                   "pruning": {**SHRINK, "overrides": {"conv": 0.75}}})
    result = run_job(path, spec, tmp_path / "out", settings=engine_settings)
    shrink = result.report.shrink
    assert shrink is not None and shrink.widths["conv"] == 2
    [group] = [g for g in shrink.groups if g.producers == ["conv"]]
    assert (group.channels_before, group.channels_after, group.pruned) == (8, 2, True)
    _check_files(result, mnist_test)


def test_unsupported_model_fails_before_reading_data(tmp_path: Path) -> None:
    path = tmp_path / "fixed.pt"
    torch.jit.save(scripting.script(models.FixedView()), str(path))
    spec = JobSpec.model_validate({"device": "cpu", "pruning": SHRINK})
    settings = Settings(mnist_root=tmp_path / "no-mnist-here", data_dir=tmp_path / "data",
                        worker_device="cpu")
    with pytest.raises(EngineError) as caught:  # refused before MNIST is even looked for
        run_job(path, spec, tmp_path / "out", settings=settings)
    assert caught.value.code is JobErrorCode.UNSUPPORTED_MODEL
    assert "x.view(-1, 400)" in caught.value.message


@pytest.mark.slow
def test_registry_mlp_shrunk_then_finetuned(engine_settings: Settings, tmp_path: Path,
                                            mnist_test: tuple[Any, Any]) -> None:
    """Fine-tuning trains the smaller model; its safetensors rebuild it from the widths."""
    torch.manual_seed(0)
    path = tmp_path / "mlp.pt"
    torch.save(registry.build("mnist_mlp").state_dict(), path)
    spec = JobSpec.model_validate({
        "architecture": "mnist_mlp", "device": "cpu", "output_format": "safetensors",
        "pruning": SHRINK, "finetune": {"epochs": 1, "batch_size": 256},
    })
    result = run_job(path, spec, tmp_path / "out", settings=engine_settings)
    shrink = result.report.shrink
    assert shrink is not None and shrink.architecture == "mnist_mlp"
    assert shrink.widths == {"fc1": 128, "fc2": 64}
    assert result.report.accuracy.after_finetune.accuracy > 0.9
    rebuilt = registry.build("mnist_mlp", shrink.widths).eval()  # as /v1/architectures says
    rebuilt.load_state_dict(load_file(result.outputs["safetensors"]))
    assert accuracy(rebuilt, mnist_test) == pytest.approx(
        result.report.accuracy.after_finetune.accuracy, abs=1e-4)
    _check_files(result, mnist_test)


@pytest.mark.slow  # evaluates on the MNIST test split
def test_cli_shrink_flag(engine_settings: Settings, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "residual.pt"
    torch.jit.save(scripting.script(models.ResidualNet().eval()), str(path))
    code = cli.main([str(path), "--method", "ln_structured", "--amount", "0.5", "--shrink",
                     "--epochs", "0", "--device", "cpu", "--no-progress", "-o",
                     str(tmp_path / "out"), "--mnist-root", str(engine_settings.mnist_root)])
    assert code == 0
    assert "shrunk: 6426 -> 2642 parameters; widths {\"stem\": 4," in capsys.readouterr().out
    assert cli.main([str(path), "--method", "l1_unstructured", "--shrink", "-o",
                     str(tmp_path / "x")]) == 2  # shrink needs a structured method
