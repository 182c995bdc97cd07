"""Dataset files for the tests, built with numpy and safetensors (the checker reads neither)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def arrays(n: int = 12, shape: tuple[int, ...] = (8, 8), classes: int = 3,
           splits: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {
        "images": rng.integers(0, 256, size=(n, *shape), dtype=np.uint8),
        "labels": (np.arange(n) % classes).astype(np.int64),
    }
    if splits:
        out["splits"] = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2] * (n // 12),
                                 dtype=np.uint8)
    return out


def write_safetensors(path: Path, tensors: dict[str, np.ndarray],
                      classes: list[str] | None = None) -> Path:
    metadata = None if classes is None else {"classes": json.dumps(classes)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_npz(path: Path, tensors: dict[str, np.ndarray], compressed: bool = False) -> Path:
    with path.open("wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **tensors)  # type: ignore[arg-type]
    return path


def coloured(n: int = 40, test: int = 10, splits: bool = True) -> dict[str, np.ndarray]:
    """3 x 32 x 32 'coloured digits': class k is a bright square in channel k % 3."""
    rng = np.random.default_rng(1)
    labels = np.arange(n, dtype=np.int64) % 4
    images = rng.integers(0, 30, size=(n, 3, 32, 32), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, k % 3, 4 * k:4 * k + 8, 8:16] = 250
    out = {"images": images, "labels": labels}
    if splits:
        out["splits"] = np.array([0] * (n - test) + [2] * test, dtype=np.uint8)
    return out
