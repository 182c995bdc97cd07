"""Evaluation and masked fine-tuning: one readable loop, tensors already on the device.

Loss everywhere is ``cross_entropy(log_softmax(outputs))``: log_softmax is idempotent on
log-probabilities, so models returning logits and models returning log-probabilities are
trained and scored the same way.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.report import Evaluation, Progress
from core.jobs.spec import DistillSpec, FinetuneSpec, InputSpec, Optimizer
from worker.engine import data, script_copy
from worker.engine.data import Split, TeacherFn
from worker.engine.errors import Cancelled, EngineError

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]

EVAL_BATCH = 1000  # large enough to amortise Python, small enough for conv activations
PROGRESS_EVERY = 100  # steps between progress reports (each costs one host sync)


def loss_fn(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # == cross_entropy(log_softmax(outputs)), with one log_softmax instead of two.
    return F.nll_loss(F.log_softmax(outputs, dim=1), labels)


def distill_loss(outputs: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor,
                 spec: DistillSpec) -> torch.Tensor:
    """Hinton et al.'s loss: ``(1 - w) * CE + w * T**2 * KL(teacher || student)``, both
    softened at T; ``teacher`` holds the teacher's log-probabilities at T (``teacher_targets``).
    The T**2 keeps the soft term's gradients on the scale of the hard term's."""
    student = F.log_softmax(F.log_softmax(outputs, dim=1) / spec.temperature, dim=1)
    soft = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return ((1.0 - spec.weight) * loss_fn(outputs, labels)
            + spec.weight * spec.temperature ** 2 * soft)


@torch.no_grad()
def teacher_targets(model: nn.Module, split: Split, spec: DistillSpec,
                    should_cancel: CancelFn | None = None) -> torch.Tensor:
    """(N, 10) log-probabilities of ``model`` (in eval mode) at the distillation temperature,
    over ``split`` in stored order: computed once, so a fine-tune step pays no teacher pass.

    The outputs go through log_softmax first, as ``loss_fn`` does, so a model returning
    log-probabilities is softened exactly like one returning logits."""
    was_training = model.training
    model.eval()
    rows = []
    try:
        for images, _labels in split.batches(EVAL_BATCH):
            _check_cancel(should_cancel)
            rows.append(soft_targets(model, spec, images))
    finally:
        model.train(was_training)
    with torch.inference_mode(False):
        return torch.cat(rows).clone()


@torch.no_grad()
def soft_targets(model: nn.Module, spec: DistillSpec, images: torch.Tensor) -> torch.Tensor:
    """(B, 10): ``model``'s log-probabilities at the distillation temperature for one batch
    (``model`` as it is: the caller puts it in eval mode)."""
    log_probs = F.log_softmax(model(images).float(), dim=1)
    return F.log_softmax(log_probs / spec.temperature, dim=1)


def frozen_teacher(model: nn.Module, spec: DistillSpec) -> TeacherFn:
    """A copy of the dense ``model`` in eval mode, as a function from a batch to its soft
    targets: for augmented fine-tuning, where each batch's images are new. A copy, because
    pruning changes ``model`` in place; a TorchScript model is saved and loaded again, so no
    later pass that edits its graphs reaches the teacher's."""
    copied = (script_copy.reloaded(model) if isinstance(model, torch.jit.ScriptModule)
              else copy.deepcopy(model))
    copied.eval()
    for param in copied.parameters():
        param.requires_grad_(False)
    return functools.partial(soft_targets, copied, spec)


def _check_cancel(should_cancel: CancelFn | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled()


_CHANNELS = re.compile(r"to have (\d+) channels, but got (\d+) channels")
_TOO_SMALL = re.compile(r"can't be greater than actual input size|Output size is too small")


def _input_fix(error: str, spec: InputSpec) -> str | None:
    """What to set in the spec's input block when the model was built for other images."""
    channels = _CHANNELS.search(error)
    if channels is not None:
        wanted = int(channels.group(1))
        if wanted in (1, 3):
            return (f"its first layer takes {wanted} channels: set input.channels: {wanted}"
                    + (" (the grey channel replicated)" if wanted == 3 else ""))
        return f"its first layer takes {wanted} channels; input.channels can be 1 or 3"
    if _TOO_SMALL.search(error):
        return (f"its layers need images larger than {spec.size} x {spec.size}: set input.size "
                "(e.g. 32 or 64; 75 for Inception-v3)")
    return None


def check_io_contract(model: nn.Module, split: Split, spec: InputSpec) -> None:
    """Run two test images through the model: it must return a (2, 10) float tensor."""
    images = split.images[:2]
    was_training = model.training
    model.eval()
    expected_in = f"(N, {', '.join(str(d) for d in spec.shape)})"
    try:
        with torch.no_grad():
            outputs = model(images)
    except Exception as exc:  # the model's own code failed: say what it was given
        fix = _input_fix(str(exc), spec)
        if fix is not None:
            raise EngineError(
                JobErrorCode.ARCHITECTURE_MISMATCH,
                f"the model does not take MNIST as fed, {expected_in}: {fix}. It raised: {exc}",
            ) from exc
        hint = "" if spec.flatten else " (set input.flatten=true to feed (N, 784))"
        raise EngineError(
            JobErrorCode.INCOMPATIBLE_MODEL,
            f"the model fails on MNIST input: it was given a float32 tensor of shape "
            f"{list(images.shape)}, i.e. {expected_in}{hint}, and raised: {exc}",
        ) from exc
    finally:
        model.train(was_training)
    if not (
        isinstance(outputs, torch.Tensor)
        and outputs.is_floating_point()
        and tuple(outputs.shape) == (2, 10)
    ):
        seen = (
            f"a {outputs.dtype} tensor of shape {list(outputs.shape)}"
            if isinstance(outputs, torch.Tensor)
            else f"a {type(outputs).__name__}"
        )
        raise EngineError(
            JobErrorCode.INCOMPATIBLE_MODEL,
            f"for an input of shape {list(images.shape)} the model returned {seen}; expected a "
            "float tensor of shape [2, 10] (logits or log-probabilities over the 10 digits)",
        )


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, should_cancel: CancelFn | None = None
) -> Evaluation:
    """Accuracy and mean loss over the whole split; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = split.labels.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for images, labels in split.batches(EVAL_BATCH):
            _check_cancel(should_cancel)
            log_probs = F.log_softmax(model(images).float(), dim=1)  # (B, 10)
            loss_sum += F.nll_loss(log_probs, labels, reduction="sum")
            correct += (log_probs.argmax(dim=1) == labels).sum()
    finally:
        model.train(was_training)
    n = len(split)
    return Evaluation(accuracy=int(correct) / n, loss=float(loss_sum) / n)


class MaskHold:
    """Keeps pruned entries at exactly zero around every optimizer step.

    Zeroing their gradients before the step keeps the optimizer state (Adam's moments, SGD's
    momentum) at zero there, and weight decay of a zero weight is zero; multiplying the
    weights by the mask after the step makes the guarantee exact whatever the optimizer does.
    """

    def __init__(self, params: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
        self.params = params
        self.masks = masks

    @torch.no_grad()
    def before_step(self) -> None:
        pairs = [(p.grad, m) for p, m in zip(self.params, self.masks, strict=True)
                 if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def after_step(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)


class Hold(Protocol):
    """What ``finetune`` calls around each optimizer step (``MaskHold``, or a quantiser's)."""

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...


def make_optimizer(params: Sequence[torch.Tensor], spec: FinetuneSpec) -> torch.optim.Optimizer:
    """Adam or SGD with momentum; the fused kernels when the parameters allow them (one kernel
    per tensor instead of a dozen: it matters at batch 64), else the foreach ones."""
    try:
        return _optimizer(params, spec, fused=True)
    except (RuntimeError, ValueError):  # e.g. a dtype or device the fused kernels lack
        return _optimizer(params, spec, fused=False)


def _optimizer(
    params: Sequence[torch.Tensor], spec: FinetuneSpec, *, fused: bool
) -> torch.optim.Optimizer:
    foreach = None if fused else True
    if spec.optimizer is Optimizer.SGD:
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
            fused=fused, foreach=foreach,
        )
    return torch.optim.Adam(
        params, lr=spec.lr, weight_decay=spec.weight_decay, fused=fused, foreach=foreach
    )


def lr_factor(step: int, total: int, spec: FinetuneSpec) -> float:
    """Multiplier of ``spec.lr`` at 0-based optimizer step ``step`` of ``total``: a linear
    warm-up over ``warmup_steps`` (step 0 at lr/warmup), then constant or cosine to 0."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.lr_schedule == "constant":
        return 1.0
    span = max(total - spec.warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - spec.warmup_steps, span) / span))


def steps_per_epoch(train: Split, spec: FinetuneSpec) -> int:
    return math.ceil(len(train) / spec.batch_size)


def _check_teacher(train: Split, spec: FinetuneSpec) -> None:
    """Teacher rows cached from the stored images are wrong for augmented ones."""
    if spec.augment is not None and spec.distill is not None and train.teacher is not None:
        raise ValueError("augmented fine-tuning with distillation needs the teacher run on "
                         "each batch (Split.with_teacher_fn), not rows cached from the stored "
                         "images")


def finetune(
    model: nn.Module,
    train: Split,
    spec: FinetuneSpec,
    hold: Hold,
    *,
    seed: int,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    on_step: Callable[[int], None] | None = None,
    extra_params: Sequence[torch.Tensor] = (),
) -> list[float]:
    """Train ``spec.epochs`` epochs with the masks held; returns the mean loss per epoch.

    ``on_step(t)`` runs before the t-th (0-based) optimizer step: a gradual schedule updates
    ``hold``'s masks there. ``extra_params`` (a quantiser's centroids) are stepped too; the
    hold gives them their gradients."""
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    optimizer = make_optimizer(params, spec)
    generator = torch.Generator().manual_seed(seed)
    steps = steps_per_epoch(train, spec)
    total = steps * spec.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: lr_factor(t, total, spec))
    epoch_losses = []
    _check_teacher(train, spec)
    shifts = torch.Generator().manual_seed(seed + 1)  # its own stream: the order is unchanged
    model.train()
    for epoch in range(1, spec.epochs + 1):
        loss_sum = torch.zeros((), device=train.labels.device)
        batches = train.shuffled_batches(spec.batch_size, generator)
        for step, (images, labels, teacher) in enumerate(batches, start=1):
            _check_cancel(should_cancel)
            if on_step is not None:
                on_step((epoch - 1) * steps + step - 1)
            if spec.augment is not None:
                images = data.shifted(images, spec.augment.shift, shifts)
            if train.teacher_fn is not None and spec.distill is not None:
                teacher = train.teacher_fn(images)  # on the very images the student sees
            outputs = model(images)
            loss = (loss_fn(outputs, labels) if teacher is None or spec.distill is None
                    else distill_loss(outputs, labels, teacher, spec.distill))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            hold.before_step()
            optimizer.step()
            hold.after_step()
            scheduler.step()
            loss_sum += loss.detach()  # stays on the device: no sync per step
            if on_progress is not None and step % PROGRESS_EVERY == 0 and step < steps:
                on_progress(Progress(phase="finetuning", epoch=epoch, epochs=spec.epochs,
                                     step=step, steps=steps, loss=float(loss.detach())))
        epoch_losses.append(float(loss_sum) / steps)
        if not math.isfinite(epoch_losses[-1]):  # NaN weights would also defeat the masks
            raise EngineError(
                JobErrorCode.INVALID_SPEC,
                f"fine-tuning diverged: the mean loss of epoch {epoch} is {epoch_losses[-1]}; "
                f"lower finetune.lr (now {spec.lr})",
            )
        if on_progress is not None:
            on_progress(Progress(phase="finetuning", epoch=epoch, epochs=spec.epochs,
                                 step=steps, steps=steps, loss=epoch_losses[-1]))
    return epoch_losses
