"""The data a job fine-tunes and evaluates on, and the model's fit to it.

``load_job_data``: MNIST (the default) or another of the MNIST family by name
(``data.FAMILY``), or an uploaded dataset (``core/datasets``; the file is judged again here,
as models are, before numpy reads it with ``allow_pickle=False``). The same split rules hold
for every dataset (``arrange``): fine-tuning sees only training samples; a job that decides
(sensitivity, search, target) decides on images the upload never trained on: the file's own
validation split, else the even-indexed half of the test split (``finetune.validation_from``
test_half, the default; the odd-indexed half gives the reported figures), else, with
validation_from train, ``finetune.validation_size`` samples held out of train (seeded). A job
that decides nothing trains on all of train and reports the whole test split. A dataset with
no test split reports on its validation split, and ``DatasetUsed.figures_from`` says so;
``DataReport`` (``report.data``) names the images behind every figure.

``check_fits``: two samples through the model before any training; a model that does not
take the dataset's images or does not return one logit per class fails
``architecture_mismatch`` saying what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from core.datasets import DatasetRejected, check_dataset
from core.datasets.record import DatasetFormat, DatasetRecord, SplitCode
from core.jobs.error_codes import JobErrorCode
from core.jobs.report import DataReport, DatasetUsed, SplitSource
from core.jobs.spec import InputSpec, JobSpec, ValidationFrom
from core.settings import Settings
from core.storage.digest import sha256_file
from worker.engine import data, training
from worker.engine.data import Split
from worker.engine.errors import EngineError


@dataclass(frozen=True)
class UploadedDataset:
    path: Path  # a local copy of the stored file
    record: DatasetRecord


@dataclass(frozen=True)
class JobData:
    figures: Split  # what accuracy.before/after_* are measured on: test, or validation
    train: Split | None  # None: nothing to fine-tune
    validation: Split | None
    sources: DataReport  # which images each split is
    used: DatasetUsed


def load_job_data(spec: JobSpec, settings: Settings, device: torch.device,
                  uploaded: UploadedDataset | None = None) -> JobData:
    if spec.data.uploaded:
        if uploaded is None or uploaded.record.id != spec.data.dataset:
            raise EngineError(JobErrorCode.DATASET_UNAVAILABLE,
                              f"dataset {spec.data.dataset} is no longer stored")
        return _uploaded(spec, device, uploaded, settings)
    return _family(spec, settings, device)


def _family(spec: JobSpec, settings: Settings, device: torch.device) -> JobData:
    name = spec.data.dataset

    def split(train: bool) -> Split:
        return data.load_split(settings.mnist_root, train, device, spec.input,
                               download=settings.mnist_download, name=name)

    label = LABELS.get(name, name)
    arranged = arrange(spec, split(False), lambda: split(True), None, label)
    used = DatasetUsed(
        name=name, shape=[1, 28, 28], classes=10, train=arranged.train_size,
        validation=arranged.validation_size, test=len(arranged.figures),
        validation_from=arranged.validation_from, figures_from="test")
    return JobData(arranged.figures, arranged.train, arranged.validation, arranged.sources, used)


LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "kmnist": "KMNIST"}


@dataclass(frozen=True)
class Arranged:
    figures: Split  # the reported figures' images
    train: Split | None  # None: no fine-tuning
    validation: Split | None  # None: nothing decides (and no hold-out was asked)
    sources: DataReport
    validation_from: Literal["file", "held_out", "test_half", "none"]

    @property
    def train_size(self) -> int:
        return len(self.train) if self.train is not None else 0

    @property
    def validation_size(self) -> int:
        return len(self.validation) if self.validation is not None else 0


def even_half(label: str, n: int) -> str:
    return (f"{label} test, the {n} even-indexed images (0, 2, ..., {2 * n - 2}): decisions "
            "only")


def odd_half(label: str, n: int) -> str:
    return (f"{label} test, the {n} odd-indexed images (1, 3, ..., {2 * n - 1}): reported "
            "only, read by no decision")


def arrange(spec: JobSpec, test: Split, load_train: Callable[[], Split],
            file_validation: Split | None, label: str) -> Arranged:
    """The splits of a job and which images each is (module docstring; docs/datasets.md)."""
    from_train = spec.finetune.validation_from is ValidationFrom.TRAIN
    holding_out = (from_train and spec.finetune.validation_size > 0
                   and file_validation is None)
    test_source = SplitSource(images=len(test), source=f"{label} test, all {len(test)} images")
    validation, validation_source, validation_from = None, None, "none"
    if file_validation is not None and spec.decides:
        validation, validation_from = file_validation, "file"
        validation_source = SplitSource(images=len(validation), source=f"{label} validation "
                                        f"split of the file, all {len(validation)} samples")
    elif spec.decides and not from_train and len(test) >= 2:
        validation, test = data.test_halves(test)
        validation_from = "test_half"
        validation_source = SplitSource(images=len(validation),
                                        source=even_half(label, len(validation)))
        test_source = SplitSource(images=len(test), source=odd_half(label, len(test)))
    train: Split | None = None
    train_source = None
    if spec.finetune.epochs > 0 or (holding_out and spec.decides):
        train = load_train()
        if holding_out:
            train, validation = data.hold_out(train, spec.finetune.validation_size, spec.seed)
            validation_from = "held_out"
            validation_source = SplitSource(
                images=len(validation), source=f"{label} train, {len(validation)} images held "
                f"out by a permutation seeded with seed {spec.seed}; never trained on")
        train_source = SplitSource(images=len(train), source=f"{label} train" + (
            ", less the validation images" if holding_out else f", all {len(train)} images"))
    if spec.finetune.epochs == 0:
        train, train_source = None, None
    if not len(test):  # a dataset without a test split reports on its validation split
        if validation is None or not len(validation):
            raise EngineError(JobErrorCode.INVALID_SPEC, "the dataset has no test split and "
                              "no validation split to report on: set finetune.validation_size "
                              "> 0 with validation_from train, or mark test samples "
                              "(splits == 2)")
        test = validation
        test_source = SplitSource(images=len(test), source=validation_source.source
                                  if validation_source else "validation")
    sources = DataReport(validation_from=spec.finetune.validation_from.value,
                         train=train_source, validation=validation_source, test=test_source)
    return Arranged(test, train, validation, sources, validation_from)  # type: ignore[arg-type]


def _arrays(uploaded: UploadedDataset, settings: Settings) -> dict[str, np.ndarray]:
    """The file's arrays, after the same checks as at upload and its sha256 compared."""
    record = uploaded.record
    if sha256_file(uploaded.path) != record.sha256:
        raise EngineError(JobErrorCode.DATASET_UNAVAILABLE,
                          f"dataset {record.id}: the stored file does not match its sha256")
    try:
        check_dataset(uploaded.path, settings)
    except DatasetRejected as exc:
        raise EngineError(JobErrorCode.DATASET_UNAVAILABLE,
                          f"dataset {record.id} is refused: {exc.message}") from exc
    if record.info.format is DatasetFormat.NPZ:
        with np.load(uploaded.path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    from safetensors.numpy import load_file

    return load_file(str(uploaded.path))


def _uploaded(spec: JobSpec, device: torch.device, uploaded: UploadedDataset,
              settings: Settings) -> JobData:
    info = uploaded.record.info
    arrays = _arrays(uploaded, settings)
    c, h, w = info.channels, info.height, info.width
    images = torch.from_numpy(arrays["images"].reshape(-1, c, h, w))  # (N, C, H, W) uint8
    labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    codes = torch.from_numpy(arrays["splits"]) if "splits" in arrays \
        else torch.zeros(len(labels), dtype=torch.uint8)
    train_mask = codes == SplitCode.TRAIN
    x = images.float().div_(255)
    mean, std = _mean_std(x[train_mask], info.mean, info.std)
    x = x.sub_(mean.view(1, c, 1, 1)).div_(std.view(1, c, 1, 1))
    x = x.reshape(len(x), -1) if spec.input.flatten else x

    def part(code: SplitCode) -> Split:
        mask = codes == code
        return Split(x[mask].contiguous().to(device), labels[mask].to(device))

    file_validation = part(SplitCode.VALIDATION)
    arranged = arrange(spec, part(SplitCode.TEST), lambda: part(SplitCode.TRAIN),
                       file_validation if len(file_validation) else None,
                       f"dataset {uploaded.record.id}")
    test_size = int((codes == SplitCode.TEST).sum())
    used = DatasetUsed(
        name=uploaded.record.id, sha256=uploaded.record.sha256, shape=[c, h, w],
        classes=info.classes, train=arranged.train_size, validation=arranged.validation_size,
        test=test_size, validation_from=arranged.validation_from,
        figures_from="test" if test_size else "validation")
    return JobData(arranged.figures, arranged.train, arranged.validation, arranged.sources,
                   used)


def _mean_std(train: torch.Tensor, mean: list[float] | None,
              std: list[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The file's per-channel mean and std, else the training split's (never the test's)."""
    channels = (0, 2, 3)
    computed_mean = train.mean(dim=channels) if mean is None else torch.tensor(mean)
    computed_std = train.std(dim=channels).clamp_min(1e-6) if std is None else torch.tensor(std)
    return computed_mean, computed_std


def check_fits(model: torch.nn.Module, job_data: JobData, spec: InputSpec) -> None:
    """The MNIST family: the I/O contract (``training.check_io_contract``). An uploaded
    dataset: its images in, one output per class out, or ``architecture_mismatch``."""
    used = job_data.used
    if used.sha256 is None:
        training.check_io_contract(model, job_data.figures, spec)
        return
    images = job_data.figures.images[:2]
    c, h, w = used.shape
    given = f"{c}x{h}x{w} images" + (f" flattened to {c * h * w}" if spec.flatten else "")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(images)
    except Exception as exc:  # the model's own code failed: say what it was given
        raise EngineError(
            JobErrorCode.ARCHITECTURE_MISMATCH,
            f"the model does not take dataset {used.name}'s input: it was given a float32 "
            f"tensor of shape {list(images.shape)} ({given}) and raised: {exc}") from exc
    finally:
        model.train(was_training)
    expected = (len(images), used.classes)
    if not (isinstance(outputs, torch.Tensor) and outputs.is_floating_point()
            and tuple(outputs.shape) == expected):
        seen = (f"a {outputs.dtype} tensor of shape {list(outputs.shape)}"
                if isinstance(outputs, torch.Tensor) else f"a {type(outputs).__name__}")
        raise EngineError(
            JobErrorCode.ARCHITECTURE_MISMATCH,
            f"dataset {used.name} has {used.classes} classes but for {given} the model "
            f"returned {seen}; expected a float tensor of shape {list(expected)}")
