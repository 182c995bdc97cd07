""".pt2 in the engine: the job process refuses the hostile corpus before torch.export.load is
ever called; a checked program loads as a GraphModule whose layers are labelled and whose
train()/eval() switch BatchNorm; a job on a .pt2 prunes with the same masks and accuracy as
the same model sent as TorchScript, and its returned .pt2 reloads in plain torch with the
report's zeros and accuracy, and passes our own door; with pruning.shrink, a .pt2 loses the
same channels as the same model sent as TorchScript, and its returned .pt2 has the report's
shapes and accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from api_tests.models import ResidualBN, Split
from api_tests.security import hostile as h
from api_tests.security import hostile_pt2 as p
from core.jobs.formats import ModelFormat
from core.jobs.spec import JobSpec
from core.settings import Settings
from core.uploads import RejectKind, check_upload
from worker.engine import exported, pruning, registry, scripting
from worker.engine.errors import EngineError
from worker.engine.loading import load_model
from worker.engine.pipeline import RunResult, run_job

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.mark.parametrize("case", list(p.CORPUS))
def test_the_job_refuses_the_corpus_before_torch_export_load(
    case: str, tmp_path: Path, engine_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = h.make_canary(tmp_path)
    make, kind, says = p.CORPUS[case]
    path = make(tmp_path, canary)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.export.load was called on a hostile archive")

    monkeypatch.setattr(torch.export, "load", never)
    with pytest.raises(EngineError) as info:
        load_model(path, None, engine_settings)
    assert info.value.code == RejectKind(kind).job_code
    assert says in str(info.value)
    assert canary.read_text() == h.CANARY_TEXT


def _small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.build("small_cnn_bn", {"conv1": 4, "conv2": 8})


def test_a_program_loads_with_layer_kinds_and_switchable_batchnorm(
    tmp_path: Path, engine_settings: Settings
) -> None:
    path = p.export_file(_small_cnn(), tmp_path / "cnn.pt2")
    loaded = load_model(path, None, engine_settings)
    assert loaded.format is ModelFormat.PT2 and loaded.architecture is None
    kinds = {name: pruning.layer_kind(m) for name, m in loaded.module.named_modules()
             if name in {"conv1", "bn1", "fc"}}
    assert kinds == {"conv1": "Conv2d", "bn1": "BatchNorm2d", "fc": "Linear"}
    module = loaded.module
    x = torch.randn(8, 1, 28, 28)
    before = module.get_buffer("bn1.running_mean").clone()
    module.eval()
    module(x)
    assert torch.equal(module.get_buffer("bn1.running_mean"), before)  # eval: stats kept
    module.train()
    module(x)
    assert not torch.equal(module.get_buffer("bn1.running_mean"), before)  # train: updated


def test_a_torchscript_module_is_saved_as_pt2(tmp_path: Path, engine_settings: Settings) -> None:
    model = _small_cnn().eval()
    path = tmp_path / "x.pt2"
    exported.save_exported(scripting.script(model), path)
    assert check_upload(path, engine_settings) is ModelFormat.PT2
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(torch.export.load(str(path)).module()(x), model(x), atol=1e-6)


def _exported_accuracy(path: Path, split: Split) -> float:
    module = torch.export.load(str(path)).module()  # plain torch, as a user reloads it
    images, labels = split
    with torch.no_grad():
        predicted = torch.cat([module(x).argmax(1) for x in images.split(2000)])
    return int((predicted == labels).sum()) / len(labels)  # as training.evaluate counts


PRUNE = {"pruning": {"method": "l1_unstructured", "scope": "layerwise", "amount": 0.5},
         "device": "cpu"}


SMALL_WIDTHS = {"mnist_mlp": {"fc1": 32, "fc2": 16}, "lenet_300_100": {"fc1": 32, "fc2": 16},
                "lenet5": {"conv1": 3, "conv2": 6, "fc1": 16, "fc2": 16},
                "small_cnn_bn": {"conv1": 4, "conv2": 8}}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return ResidualBN() if name == "residual_bn" else registry.build(name, SMALL_WIDTHS[name])


def _as_pt2_and_script(name: str, spec: JobSpec, tmp_path: Path,
                       settings: Settings) -> tuple[RunResult, RunResult]:
    """The same job on the same model sent as a .pt2 and as TorchScript."""
    model = _model(name).eval()
    pt2 = p.export_file(model, tmp_path / "in.pt2")
    script = tmp_path / "in.pt"
    torch.jit.save(scripting.script(model), str(script))
    return (run_job(pt2, spec, tmp_path / "a", settings=settings),
            run_job(script, spec, tmp_path / "b", settings=settings))


@pytest.mark.slow
@pytest.mark.parametrize("name", [*SMALL_WIDTHS, "residual_bn"])
def test_a_pt2_job_matches_torchscript_and_its_output_reloads(
    name: str, tmp_path: Path, engine_settings: Settings, mnist_test: Split
) -> None:
    spec = JobSpec.model_validate(PRUNE | {"finetune": {"epochs": 0}})
    via_pt2, via_script = _as_pt2_and_script(name, spec, tmp_path, engine_settings)
    report = via_pt2.report
    assert [(t.name, t.layer_kind, t.zeros) for t in report.tensors] == [
        (t.name, t.layer_kind, t.zeros) for t in via_script.report.tensors]
    assert report.accuracy.after_pruning == via_script.report.accuracy.after_pruning
    assert (via_pt2.primary, report.input.format, report.output.format) == ("pt2",) * 3
    out = via_pt2.outputs[ModelFormat.PT2]
    assert check_upload(out, engine_settings) is ModelFormat.PT2  # our own door takes it
    state = torch.export.load(str(out)).state_dict
    assert {t.name: t.zeros for t in report.tensors} == {
        t.name: int((state[t.name] == 0).sum()) for t in report.tensors}
    assert _exported_accuracy(out, mnist_test) == report.accuracy.after_finetune.accuracy
    assert set(via_pt2.outputs) >= {ModelFormat.SAFETENSORS, ModelFormat.PT2}


@pytest.mark.slow
def test_a_pt2_job_fine_tunes_with_the_masks_held(
    tmp_path: Path, engine_settings: Settings, mnist_test: Split
) -> None:
    pt2 = p.export_file(_small_cnn(), tmp_path / "in.pt2")
    spec = JobSpec.model_validate(PRUNE | {"finetune": {"epochs": 1, "batch_size": 256}})
    result = run_job(pt2, spec, tmp_path / "out", settings=engine_settings)
    report = result.report
    assert report.accuracy.after_finetune.accuracy > report.accuracy.after_pruning.accuracy
    state = torch.export.load(str(result.outputs[ModelFormat.PT2])).state_dict
    assert {t.name: t.zeros for t in report.tensors} == {
        t.name: int((state[t.name] == 0).sum()) for t in report.tensors}
    assert _exported_accuracy(result.outputs[ModelFormat.PT2], mnist_test) == (
        report.accuracy.after_finetune.accuracy)


SHRINK = {"pruning": {"method": "ln_structured", "dim": 0, "amount": 0.5, "shrink": True},
          "device": "cpu"}


def _check_shrunk_pt2(result: RunResult, settings: Settings, split: Split) -> None:
    """The returned .pt2: our own door takes it, plain torch.export.load reads it, its tensors
    have the report's new shapes and it scores the report's accuracy."""
    report = result.report
    assert report.shrink is not None and result.primary == "pt2"
    out = result.outputs[ModelFormat.PT2]
    assert check_upload(out, settings) is ModelFormat.PT2
    module = torch.export.load(str(out)).module()
    state = module.state_dict()
    assert {c.name: list(state[c.name].shape) for c in report.shrink.tensors} == {
        c.name: c.shape_after for c in report.shrink.tensors}
    assert sum(p.numel() for p in module.parameters()) == report.shrink.parameters_after
    assert _exported_accuracy(out, split) == report.accuracy.after_finetune.accuracy


@pytest.mark.slow
@pytest.mark.parametrize("name", [*SMALL_WIDTHS, "residual_bn"])
def test_a_pt2_is_shrunk_like_the_same_model_as_torchscript(
    name: str, tmp_path: Path, engine_settings: Settings, mnist_test: Split
) -> None:
    spec = JobSpec.model_validate(SHRINK | {"finetune": {"epochs": 0}})
    via_pt2, via_script = _as_pt2_and_script(name, spec, tmp_path, engine_settings)
    report, other = via_pt2.report, via_script.report
    assert report.shrink is not None and other.shrink is not None
    assert report.shrink.widths == other.shrink.widths
    assert report.shrink.tensors == other.shrink.tensors
    assert report.accuracy.after_pruning == other.accuracy.after_pruning
    assert report.cost.after.flops == other.cost.after.flops < report.cost.before.flops
    assert set(report.cost.after.latency_ms) == set(report.cost.before.latency_ms)
    _check_shrunk_pt2(via_pt2, engine_settings, mnist_test)


@pytest.mark.slow
def test_a_shrunk_pt2_fine_tunes_and_its_file_scores_the_report(
    tmp_path: Path, engine_settings: Settings, mnist_test: Split
) -> None:
    pt2 = p.export_file(_model("residual_bn"), tmp_path / "in.pt2")
    spec = JobSpec.model_validate(SHRINK | {"finetune": {"epochs": 1, "batch_size": 256}})
    result = run_job(pt2, spec, tmp_path / "out", settings=engine_settings)
    report = result.report
    assert report.accuracy.after_finetune.accuracy > report.accuracy.after_pruning.accuracy
    _check_shrunk_pt2(result, engine_settings, mnist_test)
