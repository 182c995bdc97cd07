"""A dataset as a tenant resource: what the checks found in the file, the stored record and
what the API shows. Plain pydantic, no torch."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import IntEnum, StrEnum

from pydantic import BaseModel, Field

DATASETS_PATH = "/v1/datasets"
# Built-in datasets a job may name instead of an uploaded id (IDX files under the data root).
BUILTIN_DATASETS = ("mnist", "fashion_mnist", "kmnist")
DEFAULT_DATASET = "mnist"
DATASET_FILE = "dataset"  # the file's name inside its blob folder
_ID = re.compile(r"^ds-[0-9a-f]{32}$")


def new_dataset_id() -> str:
    """A fresh dataset id (never client-supplied): ``ds-`` and 32 hex digits. It is also the
    dataset's folder in the blob store; job ids (32 hex digits) can never equal one."""
    return "ds-" + uuid.uuid4().hex


def is_dataset_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


class DatasetFormat(StrEnum):
    SAFETENSORS = "safetensors"
    NPZ = "npz"


class SplitCode(IntEnum):
    """The values of a dataset's ``splits`` array: which split each sample belongs to."""

    TRAIN = 0
    VALIDATION = 1
    TEST = 2


class SplitSizes(BaseModel):
    train: int = Field(ge=0)
    validation: int = Field(ge=0, description="Samples the file itself marks as validation.")
    test: int = Field(ge=0)


class DatasetInfo(BaseModel):
    """What the checks read from the file: everything a job needs to know before training."""

    format: DatasetFormat
    samples: int = Field(ge=1)
    channels: int = Field(ge=1, le=3)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    classes: int = Field(ge=1, description="K: labels are 0..K-1.")
    class_names: list[str] | None = None
    splits: SplitSizes
    mean: list[float] | None = Field(default=None, description="Per channel, from the file.")
    std: list[float] | None = Field(default=None, description="Per channel, from the file.")


class DatasetRecord(BaseModel):
    id: str
    tenant: str
    created_at: datetime
    filename: str | None = None
    bytes: int
    sha256: str
    info: DatasetInfo


class DatasetLinks(BaseModel):
    self: str


class DatasetPublic(BaseModel):
    """A dataset as the API shows it."""

    id: str
    created_at: datetime
    filename: str | None
    bytes: int
    sha256: str
    format: DatasetFormat
    samples: int
    shape: list[int] = Field(description="One sample: [channels, height, width].")
    classes: int
    class_names: list[str] | None
    splits: SplitSizes
    links: DatasetLinks

    @classmethod
    def from_record(cls, record: DatasetRecord) -> DatasetPublic:
        info = record.info
        return cls(
            id=record.id, created_at=record.created_at, filename=record.filename,
            bytes=record.bytes, sha256=record.sha256, format=info.format,
            samples=info.samples, shape=[info.channels, info.height, info.width],
            classes=info.classes, class_names=info.class_names, splits=info.splits,
            links=DatasetLinks(self=f"{DATASETS_PATH}/{record.id}"),
        )


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    next_cursor: str | None = None
