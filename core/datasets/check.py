"""The front: size, container sniffed from the first bytes, the container's arrays from their
headers, then the rules (``rules.py``)."""

from __future__ import annotations

from pathlib import Path

from core.datasets.arrays import refuse
from core.datasets.npz_file import npz_arrays
from core.datasets.record import DatasetFormat, DatasetInfo
from core.datasets.rules import judge
from core.datasets.safetensors_file import safetensors_arrays
from core.settings import Settings
from core.uploads.rejection import RejectKind


def sniff_dataset(head: bytes) -> DatasetFormat | None:
    if head[:4] == b"PK\x03\x04":
        return DatasetFormat.NPZ
    if len(head) >= 9 and head[8:9] == b"{":
        return DatasetFormat.SAFETENSORS
    return None


def check_dataset(path: Path, settings: Settings) -> DatasetInfo:
    """Judge a stored dataset file without numpy or torch: return what it holds, or raise
    ``DatasetRejected`` naming the array at fault."""
    size = path.stat().st_size
    if size > settings.max_dataset_bytes:
        raise refuse("file", f"{size} bytes; the limit is {settings.max_dataset_bytes} "
                     "(PRUNER_MAX_DATASET_BYTES)", RejectKind.TOO_LARGE)
    with path.open("rb") as f:
        fmt = sniff_dataset(f.read(16))
    if fmt is None:
        raise refuse("file", "neither safetensors nor .npz", RejectKind.NOT_A_MODEL)
    if fmt is DatasetFormat.NPZ:
        return judge(npz_arrays(path, settings), None, fmt, settings)
    arrays, class_names = safetensors_arrays(path, settings)
    return judge(arrays, class_names, fmt, settings)
