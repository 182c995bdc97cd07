"""The data a job runs on (``worker.engine.datasets``): an uploaded dataset's splits,
normalisation from training samples only, figures from test or else validation, the model's
fit checked before training, the MNIST family's missing files."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from api_tests.core.datasets.files import coloured, write_npz, write_safetensors
from core.datasets import check_dataset
from core.datasets.record import DatasetRecord
from core.jobs.error_codes import JobErrorCode
from core.jobs.spec import DataSpec, JobSpec
from core.settings import Settings
from worker.engine.datasets import LABELS, UploadedDataset, check_fits, load_job_data
from worker.engine.errors import EngineError

CPU = torch.device("cpu")
SETTINGS = Settings()


def uploaded(tmp_path: Path, tensors: dict[str, np.ndarray],
             npz: bool = False) -> UploadedDataset:
    path = (write_npz(tmp_path / "d.npz", tensors) if npz
            else write_safetensors(tmp_path / "d.safetensors", tensors))
    record = DatasetRecord(id="ds-" + "1" * 32, tenant="local", created_at=datetime.now(UTC),
                           bytes=path.stat().st_size,
                           sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                           info=check_dataset(path, SETTINGS))
    return UploadedDataset(path, record)


def spec_on(validation_size: int = 5, epochs: int = 1, validation_from: str = "train",
            search: bool = False) -> JobSpec:
    return JobSpec.model_validate({
        "data": {"dataset": "ds-" + "1" * 32}, "search": {} if search else None,
        "finetune": {"validation_size": validation_size, "epochs": epochs,
                     "validation_from": validation_from}})


@pytest.mark.parametrize(("spec", "expected"), [
    # validation_from train: a seeded hold-out of the training samples
    (spec_on(), (25, 5, 10, "test", "held_out", [10, 3, 32, 32])),
    # deciding nothing: all of train, the whole test split, no validation
    (spec_on(validation_from="test_half"), (30, 0, 10, "test", "none", [10, 3, 32, 32])),
    # deciding (a search): the even test samples decide, the odd ones are reported
    (spec_on(validation_from="test_half", search=True),
     (30, 5, 10, "test", "test_half", [5, 3, 32, 32])),
])
def test_splits_follow_the_file_and_the_spec(
    tmp_path: Path, spec: JobSpec, expected: tuple[object, ...],
) -> None:
    job = load_job_data(spec, SETTINGS, CPU, uploaded(tmp_path, coloured()))
    assert (job.used.train, job.used.validation, job.used.test, job.used.figures_from,
            job.used.validation_from, list(job.figures.images.shape)) == expected


def test_normalisation_never_looks_at_the_test_split(tmp_path: Path) -> None:
    tensors = coloured()
    first = load_job_data(spec_on(), SETTINGS, CPU, uploaded(tmp_path, tensors))
    tensors["images"][30:] = 255  # only test images change
    (tmp_path / "d.safetensors").unlink()
    second = load_job_data(spec_on(), SETTINGS, CPU, uploaded(tmp_path, tensors))
    assert first.train is not None and second.train is not None
    assert torch.equal(first.train.images, second.train.images)


def test_without_a_test_split_the_figures_come_from_validation(tmp_path: Path) -> None:
    job = load_job_data(spec_on(), SETTINGS, CPU, uploaded(tmp_path, coloured(splits=False)))
    assert (job.used.figures_from, len(job.figures), job.used.test) == ("validation", 5, 0)


def test_without_test_or_validation_there_is_nothing_to_report_on(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as info:
        load_job_data(spec_on(validation_size=0), SETTINGS, CPU,
                      uploaded(tmp_path, coloured(splits=False)))
    assert info.value.code is JobErrorCode.INVALID_SPEC


def test_a_file_that_changed_since_upload_is_refused(tmp_path: Path) -> None:
    data = uploaded(tmp_path, coloured())
    with data.path.open("r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    with pytest.raises(EngineError) as info:
        load_job_data(spec_on(), SETTINGS, CPU, data)
    assert info.value.code is JobErrorCode.DATASET_UNAVAILABLE


def small_cnn(in_channels: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, classes))


def test_a_model_that_fits_passes(tmp_path: Path) -> None:
    job = load_job_data(spec_on(), SETTINGS, CPU, uploaded(tmp_path, coloured()))
    check_fits(small_cnn(3, 4), job, spec_on().input)


def test_a_one_channel_model_on_colour_images_is_a_mismatch(tmp_path: Path) -> None:
    job = load_job_data(spec_on(), SETTINGS, CPU, uploaded(tmp_path, coloured()))
    with pytest.raises(EngineError) as info:
        check_fits(small_cnn(1, 4), job, spec_on().input)
    assert (info.value.code, "[2, 3, 32, 32] (3x32x32 images)" in info.value.message) == (
        JobErrorCode.ARCHITECTURE_MISMATCH, True)


def test_a_model_with_too_few_classes_is_a_mismatch(tmp_path: Path) -> None:
    job = load_job_data(spec_on(), SETTINGS, CPU, uploaded(tmp_path, coloured()))
    with pytest.raises(EngineError) as info:
        check_fits(small_cnn(3, 10), job, spec_on().input)
    assert info.value.message.startswith(f"dataset {'ds-' + '1' * 32} has 4 classes but for "
                                         "3x32x32 images the model returned a torch.float32 "
                                         "tensor of shape [2, 10]")


def test_a_family_dataset_missing_under_the_root_is_unavailable(tmp_path: Path) -> None:
    spec = JobSpec(data=DataSpec(dataset="fashion_mnist"))
    with pytest.raises(EngineError) as info:
        load_job_data(spec, Settings(mnist_root=tmp_path), CPU)
    assert (info.value.code, "FashionMNIST (test split) is not available under"
            in info.value.message) == (JobErrorCode.DATASET_UNAVAILABLE, True)


def write_idx(folder: Path, prefix: str, labels: np.ndarray) -> None:
    """``<prefix>-images-idx3-ubyte`` and ``-labels-idx1-ubyte`` as the MNIST family ships
    them, gunzipped: a big-endian magic (0x0803 images, 0x0801 labels), the sizes, the bytes
    (image i filled with the value i)."""
    n = len(labels)
    images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
    header = np.array([0x0803, n, 28, 28], dtype=">u4").tobytes()
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
    header = np.array([0x0801, n], dtype=">u4").tobytes()
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.astype(np.uint8).tobytes())


@pytest.mark.parametrize(("name", "folder"), [("fashion_mnist", "FashionMNIST"),
                                              ("kmnist", "KMNIST")])
def test_a_family_dataset_present_under_the_root_loads(tmp_path: Path, name: str,
                                                       folder: str) -> None:
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    write_idx(raw, "train", np.arange(20) % 10)
    test_labels = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    write_idx(raw, "t10k", test_labels)
    spec = JobSpec.model_validate({"data": {"dataset": name}, "finetune": {
        "epochs": 1, "validation_size": 5, "validation_from": "train"}})
    job = load_job_data(spec, Settings(mnist_root=tmp_path), CPU)
    assert job.train is not None and job.validation is not None
    assert (job.used.name, job.used.train, job.used.validation, job.used.test,
            list(job.figures.images.shape), job.figures.labels.tolist(),
            job.sources.test.source if job.sources.test else None) == (
        name, 15, 5, 10, [10, 1, 28, 28], test_labels.tolist(),
        f"{LABELS[name]} test, all 10 images")


def test_an_npz_dataset_loads_the_same_samples(tmp_path: Path) -> None:
    tensors = coloured()
    from_st = load_job_data(spec_on(), SETTINGS, CPU, uploaded(tmp_path, tensors))
    from_npz = load_job_data(spec_on(), SETTINGS, CPU, uploaded(tmp_path, tensors, npz=True))
    assert torch.equal(from_st.figures.images, from_npz.figures.images)
