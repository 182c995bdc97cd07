"""The rules a dataset's arrays must meet: names, dtypes, shapes, label range, split codes,
mean and std. Images are judged from their shape alone; only the small arrays are read."""

from __future__ import annotations

import math
import struct
from array import array as typed_array

from core.datasets.arrays import Array, read_all, refuse
from core.datasets.record import DatasetFormat, DatasetInfo, SplitCode, SplitSizes
from core.settings import Settings
from core.uploads.rejection import RejectKind

REQUIRED = ("images", "labels")
OPTIONAL = ("splits", "mean", "std")
_SPLIT_BYTES = bytes(int(c) for c in SplitCode)


def judge(arrays: list[Array], class_names: list[str] | None, fmt: DatasetFormat,
          settings: Settings) -> DatasetInfo:
    by_name = _names(arrays)
    n, c, h, w = _images(by_name["images"], settings)
    classes = _labels(by_name["labels"], n, class_names, settings)
    splits = _splits(by_name.get("splits"), n)
    mean = _per_channel(by_name.get("mean"), c, positive=False)
    std = _per_channel(by_name.get("std"), c, positive=True)
    return DatasetInfo(format=fmt, samples=n, channels=c, height=h, width=w, classes=classes,
                       class_names=class_names, splits=splits, mean=mean, std=std)


def _names(arrays: list[Array]) -> dict[str, Array]:
    by_name = {a.name: a for a in arrays}
    for name in by_name:
        if name not in REQUIRED + OPTIONAL:
            raise refuse(name, "unexpected array; a dataset holds images and labels, and "
                         "optionally splits, mean and std")
    for name in REQUIRED:
        if name not in by_name:
            raise refuse(name, "missing: a dataset needs images (uint8) and labels (int64)")
    return by_name


def _images(images: Array, settings: Settings) -> tuple[int, int, int, int]:
    if images.dtype != "uint8":
        raise refuse("images", f"dtype {images.dtype}; images are uint8 (0..255)")
    shape = images.shape
    if len(shape) == 3:
        shape = (shape[0], 1, shape[1], shape[2])
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise refuse("images", f"shape {list(images.shape)}; expected N x H x W or "
                     "N x C x H x W with C 1 or 3")
    n, c, h, w = shape
    if n < 1:
        raise refuse("images", "the dataset has no samples")
    side = settings.max_dataset_side
    if not (1 <= h <= side and 1 <= w <= side):
        raise refuse("images", f"{h} x {w} pixels; height and width must be 1..{side} "
                     "(PRUNER_MAX_DATASET_SIDE)", RejectKind.TOO_LARGE)
    return n, c, h, w


def _labels(labels: Array, n: int, class_names: list[str] | None,
            settings: Settings) -> int:
    if labels.dtype != "int64":
        raise refuse("labels", f"dtype {labels.dtype}; labels are int64 (0..K-1)")
    if labels.shape != (n,):
        raise refuse("labels", f"shape {list(labels.shape)}; expected [{n}], one per image")
    values = typed_array("q", read_all(labels))
    low, high = min(values), max(values)
    limit = settings.max_dataset_classes
    k = len(class_names) if class_names is not None else high + 1
    if low < 0 or high >= k:
        raise refuse("labels", f"values span {low}..{high}; labels must be 0..{k - 1}"
                     + (" (one per class name)" if class_names is not None else ""))
    if k > limit:
        raise refuse("labels", f"{k} classes; the limit is {limit} (PRUNER_MAX_DATASET_CLASSES)",
                     RejectKind.TOO_LARGE)
    if k < 2:
        raise refuse("labels", "every label is 0: a classifier needs at least 2 classes")
    return k


def _splits(splits: Array | None, n: int) -> SplitSizes:
    if splits is None:
        return SplitSizes(train=n, validation=0, test=0)
    if splits.dtype != "uint8" or splits.shape != (n,):
        raise refuse("splits", f"{splits.dtype} {list(splits.shape)}; expected uint8 [{n}]: "
                     "0 train, 1 validation, 2 test, one per image")
    raw = read_all(splits)
    if raw.translate(None, _SPLIT_BYTES):
        raise refuse("splits", "values must be 0 (train), 1 (validation) or 2 (test)")
    sizes = SplitSizes(train=raw.count(SplitCode.TRAIN), test=raw.count(SplitCode.TEST),
                       validation=raw.count(SplitCode.VALIDATION))
    if sizes.train == 0:
        raise refuse("splits", "no sample is marked train (0)")
    return sizes


def _per_channel(values: Array | None, channels: int, *, positive: bool) -> list[float] | None:
    if values is None:
        return None
    if values.dtype != "float32" or values.shape != (channels,):
        raise refuse(values.name, f"{values.dtype} {list(values.shape)}; expected float32 "
                     f"[{channels}], one per channel")
    floats = list(struct.unpack(f"<{channels}f", read_all(values)))
    if not all(math.isfinite(v) and abs(v) <= 1e4 and (v > 0 or not positive) for v in floats):
        raise refuse(values.name, f"{floats}: must be finite" + (" and > 0" if positive else ""))
    return floats
