"""Write a dataset file the service accepts (docs/datasets.md), from arrays, an ImageFolder
directory or a torchvision dataset object.

    from client.dataset_file import from_image_folder, from_torchvision, write_dataset

    from_image_folder("photos/", "photos.safetensors", size=(32, 32), channels=3)
    from_torchvision({"train": train_set, "test": test_set}, "mine.safetensors")
    write_dataset("digits.safetensors", images, labels, splits=splits)   # numpy arrays

The file is safetensors, written here without the safetensors package: an 8-byte header
length, a JSON header, then the raw little-endian bytes. numpy is needed (imported when
called), and Pillow for image folders (both come with torchvision); never torch.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SPLIT_CODES = {"train": 0, "validation": 1, "val": 1, "test": 2}
_CODES = {"uint8": "U8", "int64": "I64", "float32": "F32"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def write_dataset(path: str | Path, images: Any, labels: Any, *, splits: Any = None,
                  class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> Path:
    """``images`` uint8 (N, H, W) or (N, C, H, W); ``labels`` 0..K-1 (stored as int64);
    ``splits`` 0 train / 1 validation / 2 test per image; ``mean``/``std`` per channel."""
    import numpy as np

    tensors: dict[str, Any] = {"images": np.ascontiguousarray(images, dtype=np.uint8),
                               "labels": np.ascontiguousarray(labels, dtype="<i8")}
    if splits is not None:
        tensors["splits"] = np.ascontiguousarray(splits, dtype=np.uint8)
    for name, values in (("mean", mean), ("std", std)):
        if values is not None:
            tensors[name] = np.asarray(values, dtype="<f4")
    header: dict[str, Any] = {}
    if class_names is not None:
        header["__metadata__"] = {"classes": json.dumps(list(class_names))}
    offset = 0
    for name, array in tensors.items():
        dtype = _CODES[array.dtype.name]
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    target = Path(path)
    with target.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for array in tensors.values():
            f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return target


def from_image_folder(root: str | Path, path: str | Path, *, size: tuple[int, int],
                      channels: int = 3) -> Path:
    """An ImageFolder directory (``root/<class>/<image>``, classes sorted by name, as
    torchvision's ImageFolder) or one with split folders (``root/train/<class>/...``,
    ``root/test/...``, ``root/val/...``), each image converted to ``channels`` (1: grey,
    3: RGB) and resized to ``size`` (height, width)."""
    import numpy as np
    from PIL import Image

    folder = Path(root)
    split_dirs = {p.name: p for p in folder.iterdir() if p.is_dir() and p.name in SPLIT_CODES}
    parts = split_dirs or {"train": folder}
    class_names = sorted({c.name for part in parts.values() for c in part.iterdir()
                          if c.is_dir()})
    images, labels, splits = [], [], []
    for split, part in sorted(parts.items()):
        for label, name in enumerate(class_names):
            for file in sorted((part / name).glob("*")) if (part / name).is_dir() else ():
                if file.suffix.lower() not in _IMAGE_SUFFIXES:
                    continue
                with Image.open(file) as image:
                    converted = image.convert("L" if channels == 1 else "RGB")
                    resized = converted.resize((size[1], size[0]))
                pixels = np.asarray(resized, dtype=np.uint8)
                images.append(pixels if channels == 1 else pixels.transpose(2, 0, 1))
                labels.append(label)
                splits.append(SPLIT_CODES[split])
    if not images:
        raise ValueError(f"no images under {folder} (expected {folder}/<class>/<image>)")
    return write_dataset(path, np.stack(images), labels, splits=splits,
                         class_names=class_names)


def from_torchvision(datasets: Mapping[str, Iterable[Any]] | Iterable[Any], path: str | Path,
                     *, class_names: Sequence[str] | None = None) -> Path:
    """A torchvision dataset object (or ``{"train": ..., "test": ...}``) of (image, label)
    pairs, images as PIL images, uint8 arrays or tensors (C, H, W) / (H, W); a float tensor
    in [0, 1] (after ``ToTensor``) is scaled back to 0..255."""
    import numpy as np

    parts: Mapping[str, Iterable[Any]] = (datasets if isinstance(datasets, Mapping)
                                          else {"train": datasets})
    images, labels, splits = [], [], []
    for split, dataset in parts.items():
        for image, label in dataset:
            images.append(_pixels(image, np))
            labels.append(int(label))
            splits.append(SPLIT_CODES[split])
    if class_names is None:
        first = next(iter(parts.values()))
        class_names = getattr(first, "classes", None)
    return write_dataset(path, np.stack(images), labels, splits=splits,
                         class_names=class_names)


def _pixels(image: Any, np: Any) -> Any:
    if hasattr(image, "getbands"):  # a PIL image: (H, W) grey or (H, W, 3)
        array = np.asarray(image.convert("RGB") if len(image.getbands()) > 1 else image,
                           dtype=np.uint8)
        return array if array.ndim == 2 else array.transpose(2, 0, 1)
    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    if array.dtype.kind == "f":
        array = np.clip(np.rint(array * 255), 0, 255)
    return array.astype(np.uint8)
