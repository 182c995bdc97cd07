"""The TorchScript op audit and the tensor checks (worker.engine.audit)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from api_tests.security import hostile as h
from api_tests.security.hostile import refused
from core.jobs.error_codes import JobErrorCode
from core.settings import Settings
from worker.engine import registry, scripting
from worker.engine.audit import audit_torchscript, check_tensors, find_disallowed
from worker.engine.errors import EngineError

# --- ordinary models pass -----------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 256), nn.Linear(256, 10)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return F.log_softmax(self.fc2(self.drop(F.relu(self.fc1(x)))), dim=1)


class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.f1, self.f2, self.f3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(torch.tanh(self.c2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.f3(torch.sigmoid(self.f2(F.relu(self.f1(x)))))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + x)  # residual add


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList([Block(8), Block(8)])
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        pooled = torch.cat([self.pool(x), F.adaptive_max_pool2d(x, 1)], dim=1)
        x = F.dropout(pooled.reshape(x.shape[0], -1), 0.1, self.training)
        return self.fc(x).mul(2.0).sub(1.0) / 2


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln, self.bn = nn.LayerNorm(10), nn.BatchNorm1d(10)
        self.flat = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flat(x)[:, :10]
        x = self.ln(F.gelu(x)) + F.leaky_relu(x) + F.silu(x) + F.elu(x)
        x = torch.clamp(self.bn(x), -5, 5).permute(1, 0).transpose(0, 1).contiguous()
        assert x.dim() == 2, "rank"
        if x.shape[1] != 10:
            raise ValueError("bad width")
        y = torch.stack([x, x.abs(), x.pow(2), torch.exp(x), x.sqrt().nan_to_num()], 0)
        return y.mean(0) + x.sum(dim=1, keepdim=True).max() - torch.matmul(x, torch.eye(10))


def round_trip(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    buf.seek(0)
    loaded: torch.jit.ScriptModule = torch.jit.load(buf)
    return loaded


ORDINARY = {
    **{name: (lambda n=name: registry.build(n)) for name in registry.BUILDERS},
    "mlp": MLP, "lenet5": LeNet5, "residual_cnn": ResidualCNN, "functional": Functional,
}  # fmt: skip


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("name", sorted(ORDINARY))
def test_ordinary_models_pass(name: str, how: str) -> None:
    model = ORDINARY[name]().eval()
    if how == "script":
        scripted = scripting.script(model)
    else:
        scripted = torch.jit.trace(model, torch.randn(2, 1, 28, 28))
    audit_torchscript(round_trip(scripted))  # raises on any refused operator
    assert find_disallowed(round_trip(scripted)) == []


def test_registry_has_the_documented_models() -> None:
    assert {"mnist_mlp", "lenet_300_100", "lenet5", "small_cnn_bn"} <= set(registry.BUILDERS)


# --- hostile code is refused, naming operator and place -------------------------------------------


HOSTILE_CODE = "code/__torch__/api_tests/security/hostile.py"


def test_from_file_read_is_refused(tmp_path: Path) -> None:
    canary = h.make_canary(tmp_path)
    module = torch.jit.load(str(h.torchscript_reads_canary(tmp_path, canary)))
    message = refused(module)
    assert message.startswith(
        "the TorchScript model uses operators outside the allow-list of pure tensor computation"
    )
    assert re.search(rf": aten::from_file in ReadsFile.forward \({HOSTILE_CODE}:\d+\)$", message)
    assert canary.read_text() == h.CANARY_TEXT


def test_from_file_write_is_refused(tmp_path: Path) -> None:
    canary = h.make_canary(tmp_path)
    module = torch.jit.load(str(h.torchscript_writes_canary(tmp_path, canary)))
    message = refused(module)
    assert re.search(rf": aten::from_file in WritesFile.forward \({HOSTILE_CODE}:\d+\)$", message)
    assert canary.read_text() == h.CANARY_TEXT


def test_the_file_attacks_are_real_when_run_unaudited(tmp_path: Path) -> None:
    """The hostile models above do what they claim when run outside the service, so the
    canary checks in this suite are meaningful."""
    canary = h.make_canary(tmp_path)
    reads = torch.jit.load(str(h.torchscript_reads_canary(tmp_path, canary)))
    leaked = reads(torch.zeros(1, 1, 28, 28)) - reads.fc(torch.zeros(1, 784))
    assert leaked[0, 0].item() == sum(b"cana")  # the canary's first 4 bytes, summed
    writes = torch.jit.load(str(h.torchscript_writes_canary(tmp_path, canary)))
    writes(torch.zeros(1, 1, 28, 28))
    assert canary.read_text() == "!!!!" + h.CANARY_TEXT[4:]


@torch.jit.script
def sneaky(x: torch.Tensor, path: str) -> torch.Tensor:
    for _ in range(2):
        if x.sum() > -1e30:
            x = x + torch.from_file(path, False, 1, dtype=torch.uint8).float()
    return x


class CallsFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sneaky(self.inner(x), "/etc/hostname")


def test_called_functions_and_nested_blocks_are_walked() -> None:
    message = refused(round_trip(scripting.script(CallsFunction())))
    assert "aten::from_file in CallsFunction.forward (code/__torch__/api_tests/security/" \
        "test_audit.py:" in message


class Forks(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        future = torch.jit.fork(sneaky, x, "/etc/hostname")
        print("forked")
        return torch.jit.wait(future)


def test_forks_print_and_what_they_run_are_refused() -> None:
    message = refused(round_trip(scripting.script(Forks())))
    for kind in ("prim::fork", "aten::wait", "prim::Print", "aten::from_file"):
        assert f"{kind} in Forks.forward" in message


class Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def leaky_hook(
    module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor
) -> torch.Tensor:
    return output + torch.from_file("/etc/hostname", False, 1, dtype=torch.uint8).float()


def test_submodule_forward_hooks_are_walked() -> None:
    model = Hooked()
    model.fc.register_forward_hook(leaky_hook)
    message = refused(scripting.script(model))
    assert "aten::from_file in fc.leaky_hook" in message


def test_not_a_script_module() -> None:
    with pytest.raises(EngineError) as info:
        audit_torchscript(nn.Linear(2, 2))  # type: ignore[arg-type]
    assert info.value.code is JobErrorCode.INVALID_MODEL


# --- tensors ---------------------------------------------------------------------------------


def tensor_error(tensors: dict[str, torch.Tensor], settings: Settings | None = None) -> EngineError:
    with pytest.raises(EngineError) as info:
        check_tensors(tensors, settings or Settings())
    return info.value


def test_float_weights_and_integer_buffers_pass() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    tensors = dict(model.state_dict())
    assert tensors["1.num_batches_tracked"].dtype == torch.int64
    check_tensors(tensors, Settings())
    check_tensors({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()},
                  Settings())
    check_tensors({"w": torch.ones(2, dtype=torch.bfloat16), "d": torch.ones(2).double(),
                   "empty": torch.empty(0, 3)}, Settings())


def test_nan_and_inf_weights() -> None:
    w = torch.zeros(2, 3)
    w[0, 1] = float("nan")
    b = torch.tensor([1.0, float("inf"), -float("inf")])
    low = torch.tensor([-float("inf"), 0.0], dtype=torch.bfloat16)
    err = tensor_error({"fc.weight": w, "fc.bias": b, "ok": torch.ones(3), "low": low})
    assert err.code is JobErrorCode.INVALID_WEIGHTS
    assert err.message == (
        "tensors with NaN or Inf values: fc.weight (1 of 6), fc.bias (2 of 3), low (1 of 2)"
    )


@pytest.mark.parametrize(
    ("tensor", "why"),
    [
        (torch.ones(2, dtype=torch.complex64), "complex (torch.complex64)"),
        (torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8), "quantized (torch.qint8)"),
        (torch.ones(2, 2).to_sparse(), "sparse (torch.sparse_coo)"),
        (torch.empty(2, device="meta"), "a meta tensor (no data)"),
        (torch.ones(2).to(torch.float8_e4m3fn), "of dtype torch.float8_e4m3fn"),
    ],
    ids=["complex", "quantized", "sparse", "meta", "float8"],
)
def test_disallowed_kinds(tensor: torch.Tensor, why: str) -> None:
    err = tensor_error({"fc.weight": tensor})
    assert err.code is JobErrorCode.UNSUPPORTED_MODEL
    assert err.message.endswith(f"integer buffers are accepted: fc.weight is {why}")


def test_size_caps() -> None:
    tensors = {"a": torch.zeros(10, 10), "b": torch.zeros(50)}
    err = tensor_error(tensors, Settings(max_tensor_elements=99))
    assert err.code is JobErrorCode.MODEL_TOO_LARGE
    assert err.message == (
        "tensors over the limit of 99 elements (PRUNER_MAX_TENSOR_ELEMENTS): "
        "a [10, 10] = 100 elements"
    )
    err = tensor_error(tensors, Settings(max_parameters=149))
    assert err.message == (
        "the model has 150 elements in all; the limit is 149 (PRUNER_MAX_PARAMETERS)"
    )
    err = tensor_error(tensors, Settings(max_tensors=1))
    assert err.message == "the model has 2 tensors; the limit is 1 (PRUNER_MAX_TENSORS)"
