"""input.channels and input.size: the spec's checks, the images as fed (replicated grey,
bilinear resize), what a model built for other images is told to set, and a torchvision
classifier shrunk and evaluated on MNIST through run_job."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.spec import InputSpec, JobSpec
from core.settings import Settings
from testkit import zoo
from worker.engine import data, measure
from worker.engine.errors import EngineError
from worker.engine.pipeline import run_job
from worker.engine.training import check_io_contract

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_the_shape_fed() -> None:
    assert InputSpec().shape == (1, 28, 28)
    assert InputSpec(channels=3, size=64).shape == (3, 64, 64)
    assert InputSpec(flatten=True).shape == (784,)
    assert measure.example_batch(InputSpec(channels=3, size=32), 4, torch.device("cpu")).shape \
        == (4, 3, 32, 32)


@pytest.mark.parametrize(("block", "says"), [
    ({"channels": 2}, "Input should be 1 or 3"),
    ({"size": 4}, "greater than or equal to 8"),
    ({"flatten": True, "channels": 3}, "input.flatten feeds (N, 784): leave channels at 1"),
    ({"flatten": True, "size": 32}, "input.flatten feeds (N, 784): leave channels at 1"),
])
def test_bad_input_blocks_are_refused(block: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=r"input") as caught:
        JobSpec.model_validate({"input": block})
    assert says in str(caught.value)


def _split(spec: InputSpec) -> data.Split:
    return data.Split(torch.zeros(2, *spec.shape), torch.zeros(2, dtype=torch.long))


def test_a_three_channel_model_is_told_to_set_input_channels() -> None:
    model = zoo.build("resnet")
    with pytest.raises(EngineError) as caught:
        check_io_contract(model, _split(InputSpec()), InputSpec())
    assert caught.value.code is JobErrorCode.ARCHITECTURE_MISMATCH
    assert "as fed, (N, 1, 28, 28): its first layer takes 3 channels: set input.channels: 3" \
        in caught.value.message
    check_io_contract(model, _split(InputSpec(channels=3)), InputSpec(channels=3))  # passes


def test_a_model_for_larger_images_is_told_to_set_input_size() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 30), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(EngineError) as caught:
        check_io_contract(model, _split(InputSpec()), InputSpec())
    assert caught.value.code is JobErrorCode.ARCHITECTURE_MISMATCH
    assert "its layers need images larger than 28 x 28: set input.size" in caught.value.message
    check_io_contract(model, _split(InputSpec(size=30)), InputSpec(size=30))  # passes


@pytest.mark.slow  # reads the MNIST test split
def test_images_are_resized_and_the_grey_channel_replicated(engine_settings: Settings) -> None:
    root = engine_settings.mnist_root
    plain = data.load_split(root, False, torch.device("cpu"), InputSpec())
    fed = data.load_split(root, False, torch.device("cpu"), InputSpec(channels=3, size=32))
    assert fed.images.shape == (len(plain), 3, 32, 32)
    expected = F.interpolate(plain.images[:5], size=(32, 32), mode="bilinear",
                             align_corners=False)
    torch.testing.assert_close(fed.images[:5, 2:3], expected, rtol=0, atol=1e-6)
    assert fed.images.stride(1) == 0  # three views of one channel, not three copies
    rest, held = data.hold_out(fed, 100, seed=0)
    assert held.images.shape == (100, 3, 32, 32) and held.images.stride(1) == 0


@pytest.mark.slow  # evaluates on MNIST
@pytest.mark.parametrize("how", ["script", "trace"])
def test_a_torchvision_mobilenet_is_shrunk_on_mnist(how: str, engine_settings: Settings,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pt"
    torch.jit.save(zoo.compile_(zoo.build("mobilenet_v2"), how, "mobilenet_v2"), str(path))
    spec = JobSpec.model_validate({
        "device": "cpu", "input": {"channels": 3, "size": 32},
        "pruning": {"method": "ln_structured", "dim": 0, "amount": 0.5, "shrink": True,
                    "exclude": ["classifier*"]},
        "finetune": {"epochs": 0}})
    result = run_job(path, spec, tmp_path / "out", settings=engine_settings)
    shrink = result.report.shrink
    assert shrink is not None
    assert shrink.parameters_after < 0.5 * shrink.parameters_before
    assert result.report.spec.input.shape == (3, 32, 32)  # the report states the input fed
    loaded = torch.jit.load(str(result.outputs["torchscript"])).eval()  # plain PyTorch
    with torch.no_grad():
        assert loaded(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_an_uploaded_dataset_takes_no_input_reshaping() -> None:
    with pytest.raises(ValidationError, match="an uploaded dataset is fed at its own shape"):
        JobSpec.model_validate({"data": {"dataset": "ds-" + "0" * 32},
                                "input": {"channels": 3}})
