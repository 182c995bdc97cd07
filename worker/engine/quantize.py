"""Trained quantisation after pruning (``spec.quantize``), the masks held throughout.

- ``kmeans`` (Han et al. 2016, weight sharing): per tensor, the non-zero weights are clustered
  into ``2 ** bits`` centroids, linearly initialised between their min and max (Lloyd's
  iterations); then the centroids are fine-tuned: the gradient of a centroid is the sum of the
  gradients of the weights that share it (``CodebookHold``).
- ``linear``: per output channel, symmetric integers in ``[-(2 ** (bits - 1) - 1),
  2 ** (bits - 1) - 1]`` times a float32 scale (the row's largest magnitude over that bound);
  an optional fine-tune with the straight-through estimator (``SteHold``): the gradient taken
  at the quantised weights updates float latent weights, re-quantised after every step.

Pruned entries are exactly +0.0 before, during and after (never stored, never updated).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from core.jobs.spec import FinetuneSpec, QuantizeSpec
from worker.engine import training
from worker.engine.data import Split
from worker.engine.pruning import Target

Kind = Literal["codebook", "linear"]


@dataclass
class QuantizedTensor:
    """What the compressed writer needs: the table the weights' values come from."""

    name: str
    kind: Kind
    bits: int
    table: torch.Tensor  # float32: the codebook (2 ** bits,) or the row scales (rows,)


def bits_for(name: str, layer_kind: str, spec: QuantizeSpec) -> int:
    """A per-tensor override (first matching pattern), else the layer kind's, else ``bits``."""
    for pattern, bits in spec.overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return bits
    return spec.layer_bits.get(layer_kind, spec.bits)


# --- k-means weight sharing -----------------------------------------------------------------

def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each value (a tie goes to the lower centroid)."""
    order = torch.argsort(centroids, stable=True)
    ordered = centroids[order]
    midpoints = (ordered[1:] + ordered[:-1]) / 2
    return order[torch.bucketize(values, midpoints)]


def fit_codebook(values: torch.Tensor, bits: int, iterations: int = 50
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook (2 ** bits,), codes (n,)) of 1-D float32 ``values`` by Lloyd's algorithm from
    a linear initialisation; a centroid left without values keeps its place."""
    k = 2 ** bits
    centroids = torch.linspace(float(values.min()), float(values.max()), k,
                               dtype=torch.float32, device=values.device)
    for _ in range(iterations):
        codes = assign(values, centroids)
        counts = torch.bincount(codes, minlength=k)
        sums = torch.zeros(k, dtype=torch.float64, device=values.device)
        sums.scatter_add_(0, codes, values.double())
        moved = torch.where(counts > 0, (sums / counts.clamp(min=1)).float(), centroids)
        if torch.equal(moved, centroids):
            break
        centroids = moved
    return centroids, assign(values, centroids)


class CodebookHold:
    """Fine-tunes shared centroids through ``training.finetune``'s hold hooks: before a step
    the weights' gradients are summed per centroid (``scatter_add``) and the weights
    themselves are left out of the step; after it the weights are rewritten from the
    codebook. Only the stored positions are ever written."""

    def __init__(self, params: list[torch.Tensor], positions: list[torch.Tensor],
                 codes: list[torch.Tensor], codebooks: list[torch.Tensor]) -> None:
        self.params, self.positions, self.codes = params, positions, codes
        self.codebooks = [nn.Parameter(c.clone()) for c in codebooks]

    @torch.no_grad()
    def before_step(self) -> None:
        for param, where, codes, codebook in self._rows():
            grad = torch.zeros_like(codebook)
            if param.grad is not None:
                grad.scatter_add_(0, codes, param.grad.reshape(-1)[where])
            codebook.grad = grad
            param.grad = None  # the weights follow their centroids, never their own step

    @torch.no_grad()
    def after_step(self) -> None:
        for param, where, codes, codebook in self._rows():
            param.view(-1)[where] = _positive_zeros(codebook[codes])

    def _rows(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Parameter]]:
        return list(zip(self.params, self.positions, self.codes, self.codebooks, strict=True))


# --- linear (per-channel symmetric) -----------------------------------------------------------

def linear_quantize(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 weight made of ``q * scale[row]``, scales (rows,)); zeros stay +0.0."""
    qmax = 2 ** (bits - 1) - 1
    rows = weight.detach().float().reshape(weight.shape[0], -1)
    scales = rows.abs().amax(dim=1) / qmax
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.clamp(torch.round(rows / scales[:, None]), -qmax, qmax)
    values = q * scales[:, None]
    return _positive_zeros(values).reshape(weight.shape), scales


class SteHold:
    """The straight-through estimator through the hold hooks: the step (taken with the
    gradient at the quantised weights, masked) lands on the float latent weights; after it
    the weights are the latent ones re-quantised, times the mask."""

    def __init__(self, params: list[torch.Tensor], masks: list[torch.Tensor],
                 bits: list[int]) -> None:
        self.params, self.masks, self.bits = params, masks, bits
        self.latent = [p.detach().clone() for p in params]
        self.codebooks: list[nn.Parameter] = []

    @torch.no_grad()
    def before_step(self) -> None:
        for param, mask, latent in zip(self.params, self.masks, self.latent, strict=True):
            if param.grad is not None:
                param.grad.mul_(mask)
            param.copy_(latent)

    @torch.no_grad()
    def after_step(self) -> None:
        for param, mask, latent, bits in zip(self.params, self.masks, self.latent, self.bits,
                                             strict=True):
            latent.copy_(param * mask)
            param.copy_(linear_quantize(latent, bits)[0])


# --- the phase --------------------------------------------------------------------------------

def _positive_zeros(weight: torch.Tensor) -> torch.Tensor:
    """-0.0 (a negative weight times a 0 mask) as +0.0, so stored and decoded bits agree."""
    return torch.where(weight == 0, torch.zeros_like(weight), weight)


@torch.no_grad()
def _prepare(target: Target) -> torch.Tensor:
    target.param.copy_(_positive_zeros(target.param))
    return target.param != 0


def quantize(model: nn.Module, targets: list[Target], spec: QuantizeSpec,
             finetune: FinetuneSpec, train: Split | None, *, seed: int,
             on_progress: training.ProgressFn | None = None,
             should_cancel: training.CancelFn | None = None) -> dict[str, QuantizedTensor]:
    """Quantise the targeted weights in place (then fine-tune as ``spec`` says); the tables
    by parameter name."""
    masks = [_prepare(t) for t in targets]
    bits = [bits_for(t.name, t.layer_kind, spec) for t in targets]
    if spec.method == "kmeans":
        hold: CodebookHold | SteHold = _kmeans_hold(targets, masks, bits, spec)
    else:
        hold = SteHold([t.param for t in targets], masks, bits)
        hold.after_step()
    if spec.epochs > 0 and train is not None:
        tune = finetune.model_copy(update={"epochs": spec.epochs, "lr": spec.lr,
                                           "weight_decay": 0.0})
        training.finetune(model, train, tune, hold, seed=seed, on_progress=on_progress,
                          should_cancel=should_cancel, extra_params=hold.codebooks)
    if isinstance(hold, CodebookHold):
        return {t.name: QuantizedTensor(t.name, "codebook", b, c.detach().clone())
                for t, b, c in zip(targets, bits, hold.codebooks, strict=True)}
    return {t.name: QuantizedTensor(t.name, "linear", b, linear_quantize(latent, b)[1])
            for t, b, latent in zip(targets, bits, hold.latent, strict=True)}


def _kmeans_hold(targets: list[Target], masks: list[torch.Tensor], bits: list[int],
                 spec: QuantizeSpec) -> CodebookHold:
    positions, codes, codebooks = [], [], []
    for target, mask, b in zip(targets, masks, bits, strict=True):
        where = torch.nonzero(mask.reshape(-1)).squeeze(1)
        values = target.param.detach().reshape(-1)[where].float()
        if values.numel() == 0:
            codebook = torch.zeros(2 ** b, device=where.device)
            code = torch.zeros(0, dtype=torch.int64, device=where.device)
        else:
            codebook, code = fit_codebook(values, b, spec.kmeans_iterations)
        positions.append(where)
        codes.append(code)
        codebooks.append(codebook)
    hold = CodebookHold([t.param for t in targets], positions, codes, codebooks)
    hold.after_step()
    return hold
