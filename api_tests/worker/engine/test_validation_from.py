"""Decisions on images the upload never saw (``finetune.validation_from``), which images each
figure comes from, and the warning when the validation split looks memorised."""

from __future__ import annotations

import pytest
import torch

from core.jobs.cost import Cost
from core.jobs.report import DataReport, Evaluation, SplitSource
from core.jobs.spec import JobSpec
from core.settings import Settings
from worker.engine import data, datasets, phases
from worker.engine.data import Split
from worker.engine.datasets import JobData
from worker.engine.results import Dense

CPU = torch.device("cpu")


def _mnist(spec: dict[str, object], settings: Settings) -> JobData:
    return datasets.load_job_data(JobSpec.model_validate(spec), settings, CPU)


def test_test_halves_interleave_and_partition() -> None:
    test = Split(torch.arange(10, dtype=torch.float32).unsqueeze(1), torch.arange(10))
    validation, reported = data.test_halves(test)
    assert validation.labels.tolist() == [0, 2, 4, 6, 8]
    assert reported.labels.tolist() == [1, 3, 5, 7, 9]


def test_a_deciding_job_decides_on_even_test_images_and_reports_the_odd(
    engine_settings: Settings,
) -> None:
    splits = _mnist({"search": {}}, engine_settings)
    full = data.load_split(engine_settings.mnist_root, False, CPU, JobSpec().input)
    assert splits.validation is not None and splits.train is not None
    assert torch.equal(splits.validation.images, full.images[0::2])
    assert torch.equal(splits.figures.images, full.images[1::2])
    assert len(splits.train) == 60000  # nothing is held out of train
    assert splits.sources.validation is not None and splits.sources.train is not None
    assert (splits.sources.train.images, splits.sources.validation.images,
            splits.sources.test.images) == (60000, 5000, 5000)
    assert splits.sources.validation.source == (
        "MNIST test, the 5000 even-indexed images (0, 2, ..., 9998): decisions only")
    assert splits.sources.test.source == (
        "MNIST test, the 5000 odd-indexed images (1, 3, ..., 9999): reported only, read by no "
        "decision")


def test_a_job_that_decides_nothing_trains_on_all_of_train(engine_settings: Settings) -> None:
    splits = _mnist({"finetune": {"epochs": 1}}, engine_settings)
    assert splits.train is not None and len(splits.train) == 60000
    assert splits.validation is None and splits.sources.validation is None
    assert len(splits.figures) == 10000 and splits.sources.test.images == 10000


def test_validation_from_train_holds_out_and_reports_the_whole_test_split(
    engine_settings: Settings,
) -> None:
    splits = _mnist({"search": {}, "seed": 3, "finetune": {
        "validation_from": "train", "validation_size": 2000}}, engine_settings)
    assert splits.validation is not None and splits.train is not None
    assert (len(splits.train), len(splits.validation), len(splits.figures)) == (58000, 2000, 10000)
    assert splits.sources.validation is not None
    assert splits.sources.validation.source.startswith("MNIST train, 2000 images held out")


def _dense(validation: float, test: float) -> Dense:
    cost = Cost(parameters=1, nonzero_parameters=1, flops=1, effective_flops=1, bytes={},
                latency_ms={}, latency_method="", device="cpu")
    return Dense(cost, Evaluation(accuracy=test, loss=0.1),
                 Evaluation(accuracy=validation, loss=0.1, split="validation"), (1, 28, 28))


SOURCES = DataReport(validation_from="train", train=None,
                     validation=SplitSource(images=5000, source="v"),
                     test=SplitSource(images=10000, source="t"))


@pytest.mark.parametrize(("validation", "test", "warned"), [
    (1.0, 0.9837, True),  # the LeNet-300-100 trained on all of train
    (0.9822, 0.9835, False),  # the benchmark's model trained without the hold-out
    (0.9860, 0.9835, False),  # 0.0025 above: within noise of 5000 + 10000 images
])
def test_memorised_validation_is_warned(validation: float, test: float, warned: bool) -> None:
    warning = phases.memorised_warning(_dense(validation, test), SOURCES)
    assert (warning is not None) == warned
