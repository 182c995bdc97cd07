"""spec.deploy: ONNX files run in ONNX Runtime with the PyTorch model's accuracy, a clear
onnx_unavailable where export fails, an int8 ONNX kept only when it runs faster, and torchao
int8 restored with weights_only=True."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from api_tests.support.stacks import mnist_root
from core.jobs.cost import Latency
from core.jobs.formats import ModelFormat
from core.jobs.spec import DeploySpec, FinetuneSpec, InputSpec
from worker.engine import data, deploy, registry, scripting, training
from worker.engine.data import Split
from worker.engine.training import MaskHold


def _splits() -> tuple[Split, Split]:
    cpu = torch.device("cpu")
    train = data.load_split(mnist_root(), True, cpu, InputSpec())
    test = data.load_split(mnist_root(), False, cpu, InputSpec())
    return Split(train.images[:2000], train.labels[:2000]), Split(test.images[:1000],
                                                                   test.labels[:1000])


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Split]:
    torch.manual_seed(0)
    train, test = _splits()
    model = registry.build("lenet_300_100")
    training.finetune(model, train, FinetuneSpec(epochs=1), MaskHold([], []), seed=0)
    return model.eval(), test


def test_onnx_and_int8_of_a_trained_model(trained: tuple[nn.Module, Split],
                                          tmp_path: Path) -> None:
    model, test = trained
    # the int8 ONNX file is kept or not by a timing: its own tests below fix the timing
    phase = deploy.deploy_phase(model, DeploySpec(onnx_int8=False), InputSpec(), test,
                                tmp_path)
    assert phase is not None
    reference = training.evaluate(model, test).accuracy
    assert set(phase.runtimes) == {"onnx", "int8"}
    onnx, int8 = phase.runtimes["onnx"], phase.runtimes["int8"]
    assert onnx.available and onnx.accuracy == pytest.approx(reference, abs=1e-4)
    assert set(onnx.latency_ms) == set(onnx.reference_latency_ms) == {"batch_1", "batch_256"}
    assert int8.available and int8.accuracy == pytest.approx(reference, abs=0.001)
    assert set(phase.outputs) == {ModelFormat.ONNX, ModelFormat.TORCHAO_INT8}


def test_int8_restores_with_weights_only(trained: tuple[nn.Module, Split],
                                         tmp_path: Path) -> None:
    model, test = trained
    quantized = deploy.int8_model(model)
    torch.save(quantized.state_dict(), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    fresh = deploy.int8_model(registry.build("lenet_300_100"))
    fresh.load_state_dict(state, assign=True)
    assert training.evaluate(fresh, test) == training.evaluate(quantized, test)


@pytest.mark.parametrize("name", sorted(registry.BUILDERS))
def test_every_registry_architecture_exports_and_agrees_in_ort(name: str,
                                                               tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = registry.build(name).eval()
    images = torch.randn(8, 1, 28, 28)
    assert deploy.export_onnx(model, images[:2], tmp_path / "m.onnx") is None
    outputs = deploy.ort_run(deploy.ort_session(tmp_path / "m.onnx"), images)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(outputs), model(images), atol=1e-5)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x.flatten(1))
        if out.sum() > 0:  # control flow on values: torch.export cannot trace it
            return out
        return -out


def test_a_model_that_does_not_export_gets_a_reason_and_no_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    reason = deploy.export_onnx(DataDependent().eval(), torch.randn(2, 1, 28, 28), path)
    assert (reason is not None and reason.startswith("onnx_unavailable: "), path.exists()) == (
        True, False)


def test_torchscript_goes_through_the_converter(tmp_path: Path) -> None:
    model = registry.build("mnist_mlp").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = scripting.script(model)
    images = torch.randn(4, 1, 28, 28)
    reason = deploy.export_onnx(scripted, images, tmp_path / "m.onnx")
    assert reason is None
    outputs = deploy.ort_run(deploy.ort_session(tmp_path / "m.onnx"), images)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(outputs), model(images), atol=1e-5)


def test_an_exported_program_exports_with_a_dynamic_batch(tmp_path: Path) -> None:
    """A .pt2 upload is held as ``ExportedProgram.module()`` (a GraphModule): it is exported
    again, batch dynamic, with no converter in between."""
    torch.manual_seed(0)
    model = registry.build("lenet5").eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.zeros(2, 1, 28, 28),),
                                  dynamic_shapes=({0: batch},))
    module = program.module()
    assert isinstance(module, torch.fx.GraphModule)
    reason = deploy.export_onnx(module, torch.randn(2, 1, 28, 28), tmp_path / "m.onnx")
    assert reason is None
    images = torch.randn(7, 1, 28, 28)  # another batch size than the example's
    outputs = deploy.ort_run(deploy.ort_session(tmp_path / "m.onnx"), images)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(outputs), model(images), atol=1e-5)


def _ms(p50: float) -> Latency:
    return Latency(p50=p50, p90=p50, runs=3)


def test_slower_reason_compares_the_largest_batch() -> None:
    faster_at_256 = {"batch_1": _ms(2.0), "batch_256": _ms(4.0)}
    fp32 = {"batch_1": _ms(1.0), "batch_256": _ms(5.0)}
    assert deploy.slower_reason(faster_at_256, fp32, 256) is None
    reason = deploy.slower_reason({"batch_1": _ms(0.5), "batch_256": _ms(5.0)}, fp32, 256)
    assert reason == ("onnx_int8_slower: 5 ms against the fp32 ONNX file's 5 ms at batch_256 "
                      "(p50, timed in alternation); not kept")


def _deploy_int8(model: nn.Module, test: Split, folder: Path, monkeypatch: pytest.MonkeyPatch,
                 slower: str | None) -> deploy.DeployPhase:
    timed: list[tuple[set[str], set[str]]] = []

    def decide(int8_ms: dict[str, Latency], fp32_ms: dict[str, Latency], batch: int
               ) -> str | None:
        assert batch == 256
        timed.append((set(int8_ms), set(fp32_ms)))
        return slower

    monkeypatch.setattr(deploy, "slower_reason", decide)
    phase = deploy.deploy_phase(model, DeploySpec(int8=False), InputSpec(), test, folder)
    assert phase is not None
    assert timed == [({"batch_1", "batch_256"}, {"batch_1", "batch_256"})]
    return phase


def test_an_int8_onnx_that_runs_faster_is_kept(trained: tuple[nn.Module, Split],
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model, test = trained
    phase = _deploy_int8(model, test, tmp_path, monkeypatch, slower=None)
    cost = phase.runtimes["onnx_int8"]
    path = phase.outputs[ModelFormat.ONNX_INT8]
    assert path == tmp_path / "model.int8.onnx" and path.exists()
    assert cost.available and cost.reason is None and cost.reference == "onnx"
    assert set(cost.latency_ms) == set(cost.reference_latency_ms) == {"batch_1", "batch_256"}
    # int8 weights: about a quarter of the fp32 file
    assert cost.bytes == path.stat().st_size < 0.3 * (tmp_path / "model.onnx").stat().st_size
    session = deploy.ort_session(path)
    # scored at the job's evaluation batch: dynamic quantisation scales activations per
    # batch, so another batch size can move a prediction (0.784 vs 0.785 at 256 here)
    assert cost.accuracy == deploy.ort_accuracy(session, test, training.EVAL_BATCH)
    reference = training.evaluate(model, test).accuracy
    assert cost.accuracy_delta == pytest.approx(cost.accuracy - reference)
    assert abs(cost.accuracy_delta) <= 0.01  # int8 weights barely move an MLP's accuracy
    int8_ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "MatMulInteger" in int8_ops


def test_an_int8_onnx_that_runs_slower_is_not_kept(trained: tuple[nn.Module, Split],
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model, test = trained
    phase = _deploy_int8(model, test, tmp_path, monkeypatch, slower="onnx_int8_slower: 9 ms")
    cost = phase.runtimes["onnx_int8"]
    assert (cost.available, cost.reason) == (False, "onnx_int8_slower: 9 ms")
    assert set(cost.latency_ms) == {"batch_1", "batch_256"} and cost.accuracy is not None
    assert ModelFormat.ONNX_INT8 not in phase.outputs
    assert not (tmp_path / "model.int8.onnx").exists()
    assert ModelFormat.ONNX in phase.outputs  # the fp32 file stays


def test_no_onnx_file_no_int8_onnx(trained: tuple[nn.Module, Split], tmp_path: Path) -> None:
    model, test = trained
    phase = deploy.deploy_phase(model, DeploySpec(onnx=False, int8=False), InputSpec(), test,
                                tmp_path)
    assert phase is not None and set(phase.outputs) == set()
    cost = phase.runtimes["onnx_int8"]
    assert not cost.available and cost.reason is not None
    assert cost.reason.startswith("onnx_int8_unavailable: it is made from the job's ONNX file")
