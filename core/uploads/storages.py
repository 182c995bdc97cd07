"""Storages and tensors of a torch zip archive, judged from the pickle scan and the zip
directory: each storage's declared size against its entry, each tensor's view against its
storage, and the tensor and element caps."""

from __future__ import annotations

import math
import zipfile

from core.settings import Settings
from core.uploads.allowlists import DTYPE_ITEMSIZE, STORAGE_ITEMSIZE, UNTYPED_STORAGE
from core.uploads.pickle_scan import StorageRecord, TensorRecord
from core.uploads.rejection import malformed, too_large, unsupported


def check_storages(
    storages: dict[str, StorageRecord],
    tensors: list[TensorRecord],
    entries: dict[str, zipfile.ZipInfo],
    prefix: str,
    settings: Settings,
    torchscript: bool,
) -> None:
    if len(tensors) > settings.max_tensors:
        raise too_large(
            f"the archive holds {len(tensors)} tensors; the limit is {settings.max_tensors} "
            "(PRUNER_MAX_TENSORS)"
        )
    total = 0
    for key, record in storages.items():
        itemsize = STORAGE_ITEMSIZE.get(record.type_name)
        if itemsize is None:
            if torchscript:  # the state_dict path refused these globals already
                raise unsupported(
                    f"storage {key!r} has type {record.type_name}; only floating point and "
                    "integer tensors are accepted"
                )
            continue
        entry = entries.get(f"{prefix}/{key}")
        if entry is None:
            raise malformed(f"storage {key!r} has no entry {prefix}/{key} in the archive")
        declared = record.numel * itemsize
        if entry.file_size != declared:
            raise malformed(
                f"storage {key!r} declares {record.numel} x {itemsize} = {declared} bytes "
                f"but its entry {entry.filename!r} holds {entry.file_size}"
            )
        total += record.numel if record.type_name != UNTYPED_STORAGE else 0
    for tensor in tensors:
        total += _check_tensor_extent(tensor, storages, settings)
    if total > settings.max_parameters:
        raise too_large(
            f"the archive holds {total} tensor elements; the limit is "
            f"{settings.max_parameters} (PRUNER_MAX_PARAMETERS)"
        )


def _check_tensor_extent(
    tensor: TensorRecord, storages: dict[str, StorageRecord], settings: Settings
) -> int:
    """Check one tensor's view against its storage; return elements counted for the total
    (only views on untyped storages, whose storage numel is in bytes)."""
    record = storages.get(tensor.key)
    if record is None:
        raise malformed(f"a tensor refers to storage {tensor.key!r}, which is not declared")
    numel = math.prod(tensor.size)
    if any(s < 0 for s in tensor.size) or any(s < 0 for s in tensor.stride) or tensor.offset < 0:
        raise malformed(f"a tensor on storage {tensor.key!r} has a negative size/stride/offset")
    if numel > settings.max_tensor_elements:
        raise too_large(
            f"a tensor on storage {tensor.key!r} declares shape {list(tensor.size)} = {numel} "
            f"elements; the limit is {settings.max_tensor_elements} "
            "(PRUNER_MAX_TENSOR_ELEMENTS)"
        )
    storage_itemsize = STORAGE_ITEMSIZE.get(record.type_name)
    itemsize = DTYPE_ITEMSIZE.get(tensor.dtype or "", storage_itemsize)
    if storage_itemsize is None or itemsize is None:
        raise unsupported(
            f"the tensor on storage {tensor.key!r} has dtype {tensor.dtype or record.type_name}; "
            "only floating point and integer tensors are accepted"
        )
    if numel:
        dims = zip(tensor.size, tensor.stride, strict=True)
        last = tensor.offset + sum((s - 1) * st for s, st in dims)
        if (last + 1) * itemsize > record.numel * storage_itemsize:
            raise malformed(
                f"a tensor of shape {list(tensor.size)} reaches element {last} of storage "
                f"{tensor.key!r}, which holds {record.numel * storage_itemsize // itemsize}"
            )
    return numel if record.type_name == UNTYPED_STORAGE else 0
