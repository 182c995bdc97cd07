"""MNIST as tensors on the device: read once per process, normalised, then only indexed.

The raw bytes are read and normalised on the CPU (``preload`` does it in a standby job
process before its job arrives, never touching CUDA); a job on a GPU moves only the
normalised tensors to its device.

No DataLoader and no per-sample transforms: an epoch is one ``randperm`` from a seeded
generator, then one ``index_select`` per batch into a reused buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from core.jobs.error_codes import JobErrorCode
from core.jobs.spec import InputSpec
from worker.engine.errors import EngineError

# The dense model's soft targets for a batch of images, (B, ...) -> (B, 10) log-probabilities
TeacherFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Split:
    # (N, C, S, S) float, normalised (by default C = 1, S = 28); or (N, 784) when flattened.
    # With C = 3 the grey channel is one tensor seen three times (an expand view).
    images: torch.Tensor
    labels: torch.Tensor  # (N,) int64
    # (N, 10) float: a teacher's log-probabilities at the distillation temperature, or None
    teacher: torch.Tensor | None = None
    # With augmentation, the teacher itself, run on each augmented batch: rows computed once
    # from the stored images would describe other images than the ones the student sees.
    teacher_fn: TeacherFn | None = None

    def with_teacher(self, teacher: torch.Tensor) -> Split:
        return replace(self, teacher=teacher, teacher_fn=None)

    def with_teacher_fn(self, teacher_fn: TeacherFn) -> Split:
        return replace(self, teacher=None, teacher_fn=teacher_fn)

    def __len__(self) -> int:
        return self.labels.numel()

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Contiguous slices in stored order (views: no copies)."""
        for start in range(0, len(self), batch_size):
            end = start + batch_size
            yield self.images[start:end], self.labels[start:end]

    def shuffled_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(images, labels, teacher rows or None) in a random order drawn on the CPU generator
        (the same on every device).

        Each batch is gathered into one reused buffer: no per-step allocation and no shuffled
        copy of the split (5x less memory traffic per epoch). A batch is valid until the next
        one is asked for, which is all a training step needs."""
        order = torch.randperm(len(self), generator=generator).to(self.labels.device)
        images = self.images.new_empty((batch_size, *self.images.shape[1:]))
        labels = self.labels.new_empty(batch_size)
        source = self.teacher
        teacher = None if source is None else source.new_empty((batch_size, *source.shape[1:]))
        for start in range(0, len(self), batch_size):
            index = order[start:start + batch_size]
            n = len(index)
            yield (
                torch.index_select(self.images, 0, index, out=images[:n]),
                torch.index_select(self.labels, 0, index, out=labels[:n]),
                None if source is None or teacher is None
                else torch.index_select(source, 0, index, out=teacher[:n]),
            )


def shifted(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by its own random whole-pixel offset (dy, dx), each drawn uniformly
    from -shift..shift on the CPU generator (the same on every device); the border it
    uncovers repeats the edge pixels (MNIST's border is background). A new tensor: ``images``
    (a reused batch buffer, a stored split) is left as it is.

    Images are (N, C, H, W), or (N, S * S) flattened square ones (one channel)."""
    grid = _as_grid(images)  # (N, C, H, W)
    n, channels, height, width = grid.shape
    dy, dx = torch.randint(-shift, shift + 1, (2, n), generator=generator).to(images.device)
    device = images.device
    # Output pixel (i, j) of image k is input pixel (i - dy[k], j - dx[k]), clamped to the edge
    rows = (torch.arange(height, device=device) - dy[:, None]).clamp_(0, height - 1)  # (N, H)
    cols = (torch.arange(width, device=device) - dx[:, None]).clamp_(0, width - 1)  # (N, W)
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    moved = grid[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    return moved.reshape(images.shape)


def _as_grid(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 4:
        return images
    side = math.isqrt(images.shape[1]) if images.dim() == 2 else 0
    if side * side != images.shape[1] or side == 0:
        raise EngineError(
            JobErrorCode.INVALID_SPEC,
            f"finetune.augment shifts images: a batch of shape {list(images.shape)} is neither "
            "(N, C, H, W) nor flattened square images (N, S * S); leave augment out",
        )
    return images.reshape(len(images), 1, side, side)


_RAW: dict[tuple[str, bool, str], tuple[torch.Tensor, torch.Tensor]] = {}
_CPU: dict[tuple[object, ...], Split] = {}
_ON_DEVICE: dict[tuple[object, ...], Split] = {}
# The MNIST family by name: torchvision's class and its folder under the root (IDX files in
# <root>/<folder>/raw/, as for MNIST).
FAMILY = {"mnist": ("MNIST", "MNIST"), "fashion_mnist": ("FashionMNIST", "FashionMNIST"),
          "kmnist": ("KMNIST", "KMNIST")}


def _key(spec: InputSpec) -> tuple[object, ...]:
    return spec.mean, spec.std, spec.flatten, spec.channels, spec.size


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, 28, 28) -> (N, 1, size, size), bilinear, in chunks (no N-sized temporary)."""
    return torch.cat([F.interpolate(part, size=(size, size), mode="bilinear",
                                    align_corners=False) for part in torch.split(x, 8192)])


def _replicated(grey: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, 1, S, S) seen as (N, channels, S, S) without copying."""
    return grey if channels == 1 else grey.expand(-1, channels, -1, -1)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """The one stored channel of replicated images (the images themselves otherwise)."""
    replicated = images.dim() == 4 and images.shape[1] > 1 and images.stride(1) == 0
    return images[:, :1] if replicated else images


def _take(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """images[index], keeping replicated channels a view."""
    return _replicated(_grey(images)[index], images.shape[1] if images.dim() == 4 else 1)


def _raw(root: Path, train: bool, download: bool,
         name: str = "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(root.resolve()), train, name)
    if key not in _RAW:
        import torchvision.datasets  # torchvision import is slow; only when needed

        cls, folder = FAMILY[name]
        try:
            dataset = getattr(torchvision.datasets, cls)(str(root), train=train,
                                                         download=download)
        except RuntimeError as exc:  # torchvision: "Dataset not found..."
            raise EngineError(
                JobErrorCode.DATASET_UNAVAILABLE,
                f"{cls} ({'train' if train else 'test'} split) is not available under "
                f"{root} (expected {root}/{folder}/raw/*-ubyte): {exc}. "
                f"{_dataset_fix(download)}",
            ) from exc
        _RAW[key] = (dataset.data, dataset.targets)
    return _RAW[key]


def _dataset_fix(download: bool) -> str:
    if download:  # the download itself failed: typically a machine without internet access
        return ("Point PRUNER_MNIST_ROOT at a torchvision MNIST root copied from a machine that "
                "has internet access (the download failed).")
    return "Point PRUNER_MNIST_ROOT at a torchvision MNIST root, or set PRUNER_MNIST_DOWNLOAD=true."


def _on_cpu(root: Path, train: bool, spec: InputSpec, download: bool,
            name: str = "mnist") -> Split:
    """The normalised split in CPU memory, cached per process."""
    key = (str(root.resolve()), train, *_key(spec), name)
    if key not in _CPU:
        images, labels = _raw(root, train, download, name)  # (N, 28, 28) uint8, (N,) int64
        # Built outside inference mode so that training can save these for backward.
        with torch.inference_mode(False):
            x = images.unsqueeze(1).float().div_(255).sub_(spec.mean).div_(spec.std)
            x = _resized(x, spec.size) if spec.size != 28 else x  # (N, 1, S, S)
            x = x.reshape(len(x), -1) if spec.flatten else x
            _CPU[key] = Split(_replicated(x.contiguous(), spec.channels), labels)
    return _CPU[key]


def preload(root: Path, spec: InputSpec, *, download: bool = False) -> None:
    """Read and normalise both splits into CPU memory ahead of a job (no CUDA involved)."""
    for train in (False, True):
        _on_cpu(root, train, spec, download)


def load_split(
    root: Path, train: bool, device: torch.device, spec: InputSpec, *, download: bool = False,
    name: str = "mnist",
) -> Split:
    """The normalised split on ``device``, cached per process (``name``: one of ``FAMILY``)."""
    split = _on_cpu(root, train, spec, download, name)
    if device.type == "cpu":
        return split
    key = (str(root.resolve()), train, str(device), *_key(spec), name)
    if key not in _ON_DEVICE:
        with torch.inference_mode(False):
            images = _replicated(_grey(split.images).to(device), spec.channels)
            _ON_DEVICE[key] = Split(images, split.labels.to(device))
    return _ON_DEVICE[key]


def hold_out(train: Split, size: int, seed: int) -> tuple[Split, Split]:
    """(the rest, ``size`` validation images): a seeded random partition of ``train``, so the
    two never share an image and the same seed always holds out the same images."""
    if not 0 < size < len(train):
        raise EngineError(
            JobErrorCode.INVALID_SPEC,
            f"finetune.validation_size {size} must be between 1 and {len(train) - 1}",
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    order = order.to(train.labels.device)
    with torch.inference_mode(False):
        val, rest = order[:size].sort().values, order[size:].sort().values
        return (Split(_take(train.images, rest), train.labels[rest]),
                Split(_take(train.images, val), train.labels[val]))


def test_halves(test: Split) -> tuple[Split, Split]:
    """(validation, reported): the even-indexed and the odd-indexed images of the test split.

    Fixed, not seeded: every job decides on the same 5000 images and reports the other 5000,
    so figures of two jobs compare. Interleaved rather than first/second half because MNIST's
    test split is ordered by writer population (its first 5000 images are the easier ones)."""
    with torch.inference_mode(False):
        return (Split(test.images[0::2], test.labels[0::2]),
                Split(test.images[1::2], test.labels[1::2]))
