"""Hostile and broken files through the engine's one entry point (run_job): each fails with
its documented JobErrorCode and message, nothing in it runs, and no output is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from api_tests.security import hostile as h
from core.jobs.error_codes import JobErrorCode
from core.jobs.spec import FinetuneSpec, JobSpec
from core.settings import Settings
from worker.engine import registry
from worker.engine.errors import EngineError
from worker.engine.pipeline import run_job

SPEC = JobSpec(architecture="mnist_mlp", finetune=FinetuneSpec(epochs=0))
TS_SPEC = JobSpec(finetune=FinetuneSpec(epochs=0))


@pytest.fixture
def settings() -> Settings:
    root = Path(os.environ.get("PRUNER_MNIST_ROOT", "../shared/datasets"))
    return Settings(mnist_root=root, worker_device="cpu")


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return h.make_canary(tmp_path)


def fails(path: Path, spec: JobSpec, settings: Settings, tmp_path: Path) -> EngineError:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(EngineError) as info:
        run_job(path, spec, out, settings=settings)
    assert list(out.iterdir()) == []
    return info.value


def mlp_tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(registry.build("mnist_mlp").state_dict())


def test_shell_pickle(tmp_path: Path, settings: Settings, canary: Path) -> None:
    err = fails(h.shell_pickle_zip(tmp_path, canary), SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.UNSAFE_MODEL
    assert f"which loading would import and call: {os.name}.system." in err.message
    assert canary.read_text() == h.CANARY_TEXT


def test_exec_pickle(tmp_path: Path, settings: Settings, canary: Path) -> None:
    err = fails(h.exec_pickle_zip(tmp_path, canary), SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.UNSAFE_MODEL
    assert "builtins.exec" in err.message
    assert canary.read_text() == h.CANARY_TEXT


@pytest.mark.parametrize("factory", [h.torchscript_reads_canary, h.torchscript_writes_canary])
def test_torchscript_touching_files(
    tmp_path: Path, settings: Settings, canary: Path, factory: object
) -> None:
    path = factory(tmp_path, canary)  # type: ignore[operator]
    err = fails(path, TS_SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.UNSAFE_MODEL
    assert "aten::from_file in " in err.message
    assert canary.read_text() == h.CANARY_TEXT


def test_torchscript_load_time_hook(tmp_path: Path, settings: Settings, canary: Path) -> None:
    path = h.torchscript_setstate_hook(tmp_path, h.overwrite_canary_code(canary))
    err = fails(path, TS_SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.UNSAFE_MODEL
    assert "defines __setstate__" in err.message
    assert canary.read_text() == h.CANARY_TEXT


def test_whole_pickled_module(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "whole.pt"
    torch.save(registry.build("mnist_mlp"), str(path))
    err = fails(path, SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.UNSUPPORTED_MODEL
    assert "whole pickled model" in err.message and "globals found:" in err.message


def test_zip_bomb_and_many_entries(tmp_path: Path, settings: Settings) -> None:
    assert fails(h.zip_bomb(tmp_path), SPEC, settings, tmp_path).code is (
        JobErrorCode.MODEL_TOO_LARGE
    )
    err = fails(h.many_entries(tmp_path, 10_000), SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.MODEL_TOO_LARGE
    assert "10001 entries" in err.message


def test_path_traversal(tmp_path: Path, settings: Settings) -> None:
    err = fails(h.zip_with_entry(tmp_path, "archive/../../x"), SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.INVALID_MODEL
    assert not (tmp_path.parent / "x").exists()


def test_truncated_and_random(tmp_path: Path, settings: Settings) -> None:
    good = h.state_dict_file(tmp_path, mlp_tensors()).read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 3])
    assert fails(tmp_path / "cut.pt", SPEC, settings, tmp_path).code is JobErrorCode.INVALID_MODEL
    (tmp_path / "noise").write_bytes(os.urandom(1000).replace(b"{", b"(").replace(b"PK", b"pk"))
    assert fails(tmp_path / "noise", SPEC, settings, tmp_path).code is JobErrorCode.INVALID_MODEL


def test_storage_size_lies(tmp_path: Path, settings: Settings) -> None:
    src = h.state_dict_file(tmp_path, mlp_tensors())
    path = h.rewrite_zip(src, tmp_path / "lies.pt", {"/data/0": b"\x00" * 16})
    err = fails(path, SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.INVALID_MODEL
    assert err.message == (
        "storage 'data/0' declares 200704 x 4 = 802816 bytes but its entry 'sd/data/0' holds 16"
    )


def test_huge_declared_shape(tmp_path: Path, settings: Settings) -> None:
    tensors = mlp_tensors() | {"fc1.weight": torch.zeros(1).expand(100_000, 100_000)}
    err = fails(h.state_dict_file(tmp_path, tensors), SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.MODEL_TOO_LARGE
    assert "declares shape [100000, 100000] = 10000000000 elements" in err.message


def test_complex_and_quantized(tmp_path: Path, settings: Settings) -> None:
    complex_sd = mlp_tensors() | {"fc3.bias": torch.zeros(10, dtype=torch.complex64)}
    err = fails(h.state_dict_file(tmp_path, complex_sd, "c.pt"), SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.UNSUPPORTED_MODEL
    assert "torch.ComplexFloatStorage" in err.message
    quantized = mlp_tensors() | {
        "fc3.bias": torch.quantize_per_tensor(torch.zeros(10), 0.1, 0, torch.qint8)
    }
    err = fails(h.state_dict_file(tmp_path, quantized, "q.pt"), SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.UNSUPPORTED_MODEL
    assert "torch._utils._rebuild_qtensor" in err.message


class ComplexBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.register_buffer("phase", torch.zeros(10, dtype=torch.complex64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_complex_tensor_in_torchscript(tmp_path: Path, settings: Settings) -> None:
    path = h.save_script(ComplexBuffer(), tmp_path / "cplx.pt")
    err = fails(path, TS_SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.UNSUPPORTED_MODEL
    assert "has type torch.ComplexFloatStorage" in err.message


@pytest.mark.parametrize("fmt", ["state_dict", "safetensors", "torchscript"])
def test_nan_weights(tmp_path: Path, settings: Settings, fmt: str) -> None:
    tensors = mlp_tensors()
    tensors["fc2.weight"][3, 5] = float("nan")
    tensors["fc3.bias"][0] = float("inf")
    if fmt == "state_dict":
        path = h.state_dict_file(tmp_path, tensors)
        spec = SPEC
    elif fmt == "safetensors":
        path = tmp_path / "m.safetensors"
        save_file(tensors, str(path))
        spec = SPEC
    else:
        model = registry.build("mnist_mlp")
        model.load_state_dict(tensors)
        path = h.save_script(model, tmp_path / "nan_ts.pt")
        spec = TS_SPEC
    err = fails(path, spec, settings, tmp_path)
    assert err.code is JobErrorCode.INVALID_WEIGHTS
    assert err.message == (
        "tensors with NaN or Inf values: fc2.weight (1 of 32768), fc3.bias (1 of 10)"
    )


def test_state_dict_for_the_wrong_architecture(tmp_path: Path, settings: Settings) -> None:
    lenet = dict(registry.build("lenet5").state_dict())
    err = fails(h.state_dict_file(tmp_path, lenet), SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.ARCHITECTURE_MISMATCH
    assert err.message.startswith(
        "the state_dict does not fit 'mnist_mlp': unexpected keys: conv1.weight, conv1.bias, "
        "conv2.weight, conv2.bias; wrong shapes: fc1.weight: got [120, 400], expected [256, 784]"
    )


def test_model_with_wrong_output_shape(tmp_path: Path, settings: Settings) -> None:
    path = h.save_script(h.WrongOutput(), tmp_path / "wrong.pt")
    err = fails(path, TS_SPEC, settings, tmp_path)
    assert err.code is JobErrorCode.INCOMPATIBLE_MODEL
    assert err.message == (
        "for an input of shape [2, 1, 28, 28] the model returned a torch.float32 tensor of "
        "shape [2, 5]; expected a float tensor of shape [2, 10] (logits or log-probabilities "
        "over the 10 digits)"
    )


def test_over_limit_upload(tmp_path: Path, settings: Settings) -> None:
    path = h.state_dict_file(tmp_path, mlp_tensors())
    tight = settings.model_copy(update={"max_upload_bytes": 1000})
    err = fails(path, SPEC, tight, tmp_path)
    assert err.code is JobErrorCode.MODEL_TOO_LARGE
    assert "the limit is 1000 (PRUNER_MAX_UPLOAD_BYTES)" in err.message
