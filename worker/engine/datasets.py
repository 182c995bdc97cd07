"""The data a job fine-tunes and evaluates on, and the model's fit to it.

``load_job_data``: MNIST (the default) or another of the MNIST family by name
(``data.FAMILY``), or an uploaded dataset (``core/datasets``; the file is judged again here,
as models are, before numpy reads it with ``allow_pickle=False``). The same split rules hold
for every dataset: fine-tuning sees only training samples; sensitivity and search decide on
the validation split (the file's own, else ``finetune.validation_size`` samples held out of
train, seeded); the reported figures come from the test split, or from the validation split
when the dataset has none, and ``DatasetUsed.figures_from`` says which.

``check_fits``: two samples through the model before any training; a model that does not
take the dataset's images or does not return one logit per class fails
``architecture_mismatch`` saying what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.datasets import DatasetRejected, check_dataset
from core.datasets.record import DatasetFormat, DatasetRecord, SplitCode
from core.jobs.error_codes import JobErrorCode
from core.jobs.report import DatasetUsed
from core.jobs.spec import InputSpec, JobSpec
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
    used: DatasetUsed


def load_job_data(spec: JobSpec, settings: Settings, device: torch.device,
                  uploaded: UploadedDataset | None = None) -> JobData:
    if spec.data.uploaded:
        if uploaded is None or uploaded.record.id != spec.data.dataset:
            raise EngineError(JobErrorCode.DATASET_UNAVAILABLE,
                              f"dataset {spec.data.dataset} is no longer stored")
        return _uploaded(spec, device, uploaded, settings)
    return _family(spec, settings, device)


def _wants_train(spec: JobSpec) -> bool:
    return spec.finetune.epochs > 0 or spec.analysis is not None or spec.search is not None


def _family(spec: JobSpec, settings: Settings, device: torch.device) -> JobData:
    name = spec.data.dataset

    def split(train: bool) -> Split:
        return data.load_split(settings.mnist_root, train, device, spec.input,
                               download=settings.mnist_download, name=name)

    test = split(False)
    train, validation = None, None
    if _wants_train(spec):
        train = split(True)
        if spec.finetune.validation_size > 0:
            train, validation = data.hold_out(train, spec.finetune.validation_size, spec.seed)
    used = DatasetUsed(
        name=name, shape=[1, 28, 28], classes=10, train=len(train) if train else 0,
        validation=len(validation) if validation else 0, test=len(test),
        validation_from="held_out" if validation else "none", figures_from="test")
    return JobData(test, train if spec.finetune.epochs > 0 else None, validation, used)


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

    train, validation, test = part(SplitCode.TRAIN), part(SplitCode.VALIDATION), \
        part(SplitCode.TEST)
    validation_from = "file" if len(validation) else "none"
    if not len(validation) and spec.finetune.validation_size > 0 and _wants_train(spec):
        train, validation = data.hold_out(train, spec.finetune.validation_size, spec.seed)
        validation_from = "held_out"
    figures = test if len(test) else validation
    if not len(figures):
        raise EngineError(JobErrorCode.INVALID_SPEC, f"dataset {info.format} has no test "
                          "split and no validation split to report on: set "
                          "finetune.validation_size > 0 or mark test samples (splits == 2)")
    used = DatasetUsed(
        name=uploaded.record.id, sha256=uploaded.record.sha256, shape=[c, h, w],
        classes=info.classes, train=len(train), validation=len(validation), test=len(test),
        validation_from=validation_from if len(validation) else "none",
        figures_from="test" if len(test) else "validation")
    return JobData(figures, train if spec.finetune.epochs > 0 else None,
                   validation if len(validation) else None, used)


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
