"""Augmented fine-tuning (``finetune.augment``): each training image moved by its own random
whole-pixel offset, the stored images untouched, the masks exact, and with distillation the
teacher run on the very images the student sees (cached rows would describe other images)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from api_tests.models import Split as TestSplit
from api_tests.models import accuracy
from api_tests.support.stacks import TrainedMLP
from core.jobs.spec import (
    AugmentSpec,
    DistillSpec,
    FinetuneSpec,
    InputSpec,
    JobSpec,
    PruningSpec,
)
from core.settings import Settings
from worker.engine import data, pruning, scripting, training
from worker.engine.data import Split
from worker.engine.errors import EngineError
from worker.engine.exported import load_exported
from worker.engine.pipeline import run_job


def _images(n: int = 64, seed: int = 1) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def _convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_each_image_moves_by_its_own_offset_the_border_repeating_the_edge() -> None:
    images = _images(16).images
    before = images.clone()
    moved = data.shifted(images, 2, torch.Generator().manual_seed(7))
    dy, dx = torch.randint(-2, 3, (2, 16), generator=torch.Generator().manual_seed(7)).tolist()
    for k in range(16):  # by hand: output (i, j) is input (i - dy, j - dx), clamped to the edge
        for i in range(8):
            for j in range(8):
                src_i, src_j = min(max(i - dy[k], 0), 7), min(max(j - dx[k], 0), 7)
                assert moved[k, 0, i, j] == images[k, 0, src_i, src_j]
    assert torch.equal(images, before)  # a new tensor: the stored images are not touched


def test_offsets_cover_the_square_and_no_more() -> None:
    one = torch.zeros(2000, 1, 9, 9)
    one[:, 0, 4, 4] = 1.0  # a single lit pixel in the middle
    moved = data.shifted(one, 2, torch.Generator().manual_seed(0))
    where = torch.nonzero(moved[:, 0])[:, 1:] - 4  # (N, 2): each image's (dy, dx)
    assert len(where) == 2000  # each image keeps its one pixel
    assert {tuple(v) for v in where.tolist()} == {(y, x) for y in range(-2, 3)
                                                  for x in range(-2, 3)}


def test_flattened_square_images_move_like_the_grid_and_others_are_refused() -> None:
    images = _images(8).images  # (8, 1, 8, 8)
    grid = data.shifted(images, 1, torch.Generator().manual_seed(3))
    flat = data.shifted(images.reshape(8, 64), 1, torch.Generator().manual_seed(3))
    assert flat.shape == (8, 64) and torch.equal(flat.reshape(8, 1, 8, 8), grid)
    with pytest.raises(EngineError, match="augment"):
        data.shifted(torch.zeros(4, 12), 1, torch.Generator())


def test_augmented_finetune_keeps_masks_exact_and_stored_images_untouched() -> None:
    split = _images(128)
    before = split.images.clone()
    model = _convnet()
    spec = PruningSpec(amount=0.6)
    targets = pruning.find_targets(model, spec)
    masks = pruning.compute_masks(targets, spec)
    pruning.apply_masks(targets, masks)
    hold = training.MaskHold([t.param for t in targets], [masks[t.name] for t in targets])
    ft = FinetuneSpec(epochs=3, lr=1e-2, batch_size=32, augment=AugmentSpec(shift=2))
    training.finetune(model, split, ft, hold, seed=0)
    for t in targets:
        assert int((t.param[masks[t.name] == 0] != 0).sum()) == 0
        assert int((t.param[masks[t.name] == 1] == 0).sum()) == 0  # the kept ones trained
    assert torch.equal(split.images, before)


class _Recorder(nn.Module):
    """The wrapped model, recording every batch it is given."""

    def __init__(self, model: nn.Module, seen: list[torch.Tensor]) -> None:
        super().__init__()
        self.model, self.seen = model, seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.model(x)  # type: ignore[no-any-return]


def test_the_teacher_sees_the_augmented_batch_the_student_sees() -> None:
    split = _images(96)
    student_seen: list[torch.Tensor] = []
    teacher_seen: list[torch.Tensor] = []
    distill = DistillSpec(weight=0.5, temperature=2.0)
    teacher = _Recorder(_convnet(1), teacher_seen).eval()
    train = split.with_teacher_fn(lambda x: training.soft_targets(teacher, distill, x))
    ft = FinetuneSpec(epochs=2, lr=1e-3, batch_size=32, distill=distill,
                      augment=AugmentSpec(shift=2))
    training.finetune(_Recorder(_convnet(0), student_seen), train, ft,
                      training.MaskHold([], []), seed=0)
    assert len(student_seen) == len(teacher_seen) == 6
    stored = {tuple(row.reshape(-1).tolist()) for row in split.images}
    moved = 0
    for student, seen in zip(student_seen, teacher_seen, strict=True):
        assert torch.equal(student, seen)
        moved += sum(tuple(row.reshape(-1).tolist()) not in stored for row in student)
    assert moved > 150  # most of the 192 images were moved (an offset of (0, 0) is 1 in 25)


def test_cached_teacher_rows_are_refused_with_augmentation() -> None:
    split = _images(32)
    distill = DistillSpec()
    rows = training.teacher_targets(_convnet(1), split, distill)
    ft = FinetuneSpec(epochs=1, batch_size=16, distill=distill, augment=AugmentSpec())
    with pytest.raises(ValueError, match="teacher run on each batch"):
        training.finetune(_convnet(0), split.with_teacher(rows), ft, training.MaskHold([], []),
                          seed=0)


@pytest.mark.parametrize("kind", ["eager", "torchscript", "pt2"])
def test_the_frozen_teacher_is_a_copy_pruning_does_not_reach(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(2)  # dropout: a teacher left in train mode would answer at random
    dense = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                          nn.Linear(4 * 6 * 6, 10)).eval()
    x = _images(16).images
    model: nn.Module = dense
    if kind == "torchscript":
        model = scripting.script(dense)
    elif kind == "pt2":
        torch.export.save(torch.export.export(dense, (x,)), tmp_path / "m.pt2")
        model = load_exported(tmp_path / "m.pt2", Settings(worker_device="cpu"))
    distill = DistillSpec(temperature=3.0)
    with torch.no_grad():
        expected = F.log_softmax(F.log_softmax(dense(x), dim=1) / 3.0, dim=1)
    teacher = training.frozen_teacher(model, distill)
    model.train()  # the job's model fine-tunes in train mode...
    with torch.no_grad():  # ...and pruning edits it in place: all weights to zero here
        for param in model.parameters():
            param.zero_()
    torch.testing.assert_close(teacher(x), expected, rtol=0, atol=1e-6)
    assert not teacher(x).requires_grad


def test_spec_defaults_and_bounds() -> None:
    assert FinetuneSpec().augment is None  # off by default
    assert AugmentSpec().shift == 2
    for bad in ({"shift": 0}, {"shift": 9}, {"translate": 2}):
        with pytest.raises(ValidationError):
            AugmentSpec.model_validate(bad)
    spec = JobSpec.model_validate({"finetune": {"epochs": 1, "augment": {"shift": 3}}})
    assert spec.finetune.augment == AugmentSpec(shift=3)


@pytest.mark.slow
def test_a_job_augments_only_its_training_images(
    trained_mlp: TrainedMLP, mnist_test: TestSplit, engine_settings: Settings, tmp_path: Path
) -> None:
    """Through run_job (a TorchScript upload, so the teacher is a reloaded copy): the reported
    validation and test figures are the saved model's on the stored, unaugmented images, and
    the process's cached MNIST splits are left as they were."""
    cpu = torch.device("cpu")
    stored = [data.load_split(engine_settings.mnist_root, train, cpu, InputSpec())
              for train in (True, False)]
    before = [split.images.clone() for split in stored]
    spec = JobSpec.model_validate({
        "device": "cpu", "seed": 3,
        "pruning": {"amount": 0.9, "schedule": {"kind": "agp", "end": 0.5}},
        "finetune": {"epochs": 1, "batch_size": 256, "lr_schedule": "cosine",
                     "distill": {}, "augment": {"shift": 2},
                     "validation_from": "train", "validation_size": 5000}})
    result = run_job(trained_mlp.torchscript, spec, tmp_path, settings=engine_settings)
    report = result.report
    for split, images in zip(stored, before, strict=True):
        assert torch.equal(split.images, images)
    assert "teacher" in report.timings_s
    assert report.targeted.sparsity == pytest.approx(0.9, abs=1e-5)
    saved = torch.jit.load(str(result.outputs["torchscript"]))
    assert accuracy(saved, mnist_test) == pytest.approx(
        report.accuracy.after_finetune.accuracy, abs=1e-4)
    _rest, validation = data.hold_out(stored[0], 5000, seed=3)
    assert report.accuracy.validation is not None
    assert training.evaluate(saved, validation).accuracy == pytest.approx(
        report.accuracy.validation.after_finetune.accuracy, abs=1e-4)
    assert report.accuracy.after_finetune.accuracy > 0.95  # it learned on moved digits
