"""Bad inputs to the engine fail with the documented JobErrorCode and a message that says
what was seen and what was expected."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.spec import JobSpec
from core.settings import Settings
from worker.engine import registry, scripting
from worker.engine.errors import Cancelled, EngineError
from worker.engine.pipeline import run_job


def _spec(**fields: object) -> JobSpec:
    return JobSpec.model_validate({"finetune": {"epochs": 0}, "device": "cpu", **fields})


def _fails(
    path: Path, spec: JobSpec, settings: Settings, tmp_path: Path, code: JobErrorCode
) -> str:
    with pytest.raises(EngineError) as info:
        run_job(path, spec, tmp_path / "out", settings=settings)
    assert info.value.code == code, info.value.message
    return info.value.message


@pytest.fixture
def mlp_sd(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "mlp.pt"
    torch.save(registry.build("mnist_mlp").state_dict(), path)
    return path


def _scripted(module: nn.Module, path: Path) -> Path:
    torch.jit.save(scripting.script(module), str(path))
    return path


def test_unknown_architecture(mlp_sd: Path, engine_settings: Settings, tmp_path: Path) -> None:
    msg = _fails(mlp_sd, _spec(architecture="resnet9000"), engine_settings, tmp_path,
                 JobErrorCode.UNKNOWN_ARCHITECTURE)
    assert "resnet9000" in msg and "mnist_mlp" in msg


def test_architecture_required(mlp_sd: Path, engine_settings: Settings, tmp_path: Path) -> None:
    msg = _fails(mlp_sd, _spec(), engine_settings, tmp_path,
                 JobErrorCode.ARCHITECTURE_REQUIRED)
    assert "architecture" in msg


def test_key_mismatch_lists_missing_unexpected_and_shapes(
    engine_settings: Settings, tmp_path: Path
) -> None:
    state = registry.build("lenet_300_100").state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["fc3.bias"]
    path = tmp_path / "lenet.pt"
    torch.save(state, path)
    msg = _fails(path, _spec(architecture="mnist_mlp"), engine_settings, tmp_path,
                 JobErrorCode.ARCHITECTURE_MISMATCH)
    assert "missing keys: fc3.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "fc1.weight: got [300, 784], expected [256, 784]" in msg


def test_wrong_output_shape(engine_settings: Settings, tmp_path: Path) -> None:
    path = _scripted(nn.Sequential(nn.Flatten(), nn.Linear(784, 5)), tmp_path / "five.pt")
    msg = _fails(path, _spec(), engine_settings, tmp_path, JobErrorCode.INCOMPATIBLE_MODEL)
    assert "shape [2, 5]" in msg and "[2, 10]" in msg


def test_wrong_input_rank_then_flatten_fixes_it(engine_settings: Settings, tmp_path: Path) -> None:
    path = _scripted(nn.Sequential(nn.Linear(784, 10)), tmp_path / "linear.pt")
    msg = _fails(path, _spec(), engine_settings, tmp_path, JobErrorCode.INCOMPATIBLE_MODEL)
    assert "[2, 1, 28, 28]" in msg and "flatten" in msg
    flat = _spec(input={"flatten": True})
    result = run_job(path, flat, tmp_path / "ok", settings=engine_settings)
    assert result.report.targeted.zeros == round(0.3 * 7840)


def test_amount_count_larger_than_tensor(mlp_sd: Path, engine_settings: Settings,
                                         tmp_path: Path) -> None:
    spec = _spec(architecture="mnist_mlp",
                 pruning={"scope": "layerwise", "amount": 2000})  # fc3.weight has 1280
    msg = _fails(mlp_sd, spec, engine_settings, tmp_path, JobErrorCode.INVALID_SPEC)
    assert "2000" in msg and "fc3.weight" in msg and "1280" in msg
    spec = _spec(architecture="mnist_mlp", pruning={"amount": 234_753})  # global: 234752
    _fails(mlp_sd, spec, engine_settings, tmp_path, JobErrorCode.INVALID_SPEC)


def test_amount_fraction_out_of_range_names_the_field() -> None:
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValidationError, match=r"pruning\.amount"):
            _spec(pruning={"amount": bad})
    with pytest.raises(ValidationError, match="finetune.epochs"):
        _spec(finetune={"epochs": -1})


def test_structured_dim_out_of_range(mlp_sd: Path, engine_settings: Settings,
                                     tmp_path: Path) -> None:
    spec = _spec(architecture="mnist_mlp", pruning={"method": "ln_structured", "dim": 3})
    msg = _fails(mlp_sd, spec, engine_settings, tmp_path, JobErrorCode.INVALID_SPEC)
    assert "dim 3" in msg


def test_no_prunable_tensors(mlp_sd: Path, engine_settings: Settings, tmp_path: Path) -> None:
    spec = _spec(architecture="mnist_mlp", pruning={"exclude": ["fc*"]})
    msg = _fails(mlp_sd, spec, engine_settings, tmp_path, JobErrorCode.NO_PRUNABLE_TENSORS)
    assert "fc1.weight" in msg  # lists what there is


def test_dataset_unavailable(mlp_sd: Path, engine_settings: Settings, tmp_path: Path) -> None:
    settings = engine_settings.model_copy(update={"mnist_root": tmp_path / "nowhere",
                                                  "mnist_download": False})
    msg = _fails(mlp_sd, _spec(architecture="mnist_mlp"), settings, tmp_path,
                 JobErrorCode.DATASET_UNAVAILABLE)
    assert "nowhere" in msg and "PRUNER_MNIST_DOWNLOAD=true" in msg


def test_dataset_download_fails_without_internet(
    mlp_sd: Path, engine_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default (download on first use) on a machine without internet access: the job
    fails dataset_unavailable, and the message says to point PRUNER_MNIST_ROOT at a copy."""
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there
    settings = engine_settings.model_copy(update={"mnist_root": tmp_path / "nowhere",
                                                  "mnist_download": True})
    msg = _fails(mlp_sd, _spec(architecture="mnist_mlp"), settings, tmp_path,
                 JobErrorCode.DATASET_UNAVAILABLE)
    assert "nowhere" in msg and "the download failed" in msg and "PRUNER_MNIST_ROOT" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_unavailable(mlp_sd: Path, engine_settings: Settings, tmp_path: Path) -> None:
    msg = _fails(mlp_sd, _spec(architecture="mnist_mlp", device="cuda"),
                 engine_settings, tmp_path, JobErrorCode.DEVICE_UNAVAILABLE)
    assert "cuda" in msg


def test_unreadable_files_are_invalid_model(engine_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"not a pickle at all")
    _fails(path, _spec(architecture="mnist_mlp"), engine_settings, tmp_path,
           JobErrorCode.INVALID_MODEL)
    header = b'{"fc1.weight": {"dtype": "F32", "shape": [256, 784], "data_offsets": [0, 802816]}}'
    path = tmp_path / "short.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 100)  # truncated
    _fails(path, _spec(architecture="mnist_mlp"), engine_settings, tmp_path,
           JobErrorCode.INVALID_MODEL)


def test_pickled_module_is_refused(engine_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(registry.build("mnist_mlp"), path)  # a whole nn.Module, not a state_dict
    msg = _fails(path, _spec(architecture="mnist_mlp"), engine_settings, tmp_path,
                 JobErrorCode.UNSUPPORTED_MODEL)
    assert "whole pickled model" in msg and "state_dict" in msg  # and what to send instead


def test_cancel_is_checked(mlp_sd: Path, engine_settings: Settings, tmp_path: Path) -> None:
    calls = []

    def should_cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        run_job(mlp_sd, _spec(architecture="mnist_mlp", finetune={"epochs": 1}),
                tmp_path / "out", settings=engine_settings, should_cancel=should_cancel)
    assert len(calls) == 4
    assert not (tmp_path / "out").exists()
