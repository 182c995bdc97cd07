"""Pruning methods: one small strategy class per method, plus a plain function for each.

Every method scores *units* (single weights, or whole slices along ``dim`` for structured
methods) and zeroes the ``k`` lowest-scored units. ``k`` is exact: ``round(amount * units)``
for a fraction (Python's ``round``, as torch.nn.utils.prune), or the count itself. Ties are
broken by index order, so the result is deterministic. The k-th smallest score comes from
``torch.kthvalue`` (linear time, any size) rather than ``torch.quantile``, which refuses
tensors above 2**24 elements and interpolates instead of counting.

Masks are float tensors of the parameter's dtype and device (1 = kept, 0 = pruned), so that
holding them through fine-tuning is one in-place multiply.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import torch

Norm = Literal[1, 2, "inf", "fro"]


class PruningError(ValueError):
    """The spec cannot be applied to this tensor (amount too large, bad dim...)."""


def amount_to_count(amount: int | float, units: int, what: str) -> int:
    """How many of ``units`` to prune for ``amount`` (a fraction in [0, 1) or a count)."""
    if isinstance(amount, bool) or amount < 0:
        raise PruningError(f"amount for {what} must be >= 0, got {amount!r}")
    if isinstance(amount, int):
        if amount > units:
            raise PruningError(
                f"amount {amount} for {what} exceeds its {units} prunable units; "
                f"give at most {units} or a fraction in [0, 1)"
            )
        return amount
    if amount >= 1.0:
        raise PruningError(f"amount for {what} as a fraction must be in [0, 1), got {amount}")
    return round(amount * units)


def smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean 1-D mask marking exactly the ``k`` smallest ``scores``; ties go to lower index."""
    n = scores.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    threshold = torch.kthvalue(scores, k).values
    pruned = scores < threshold
    missing = k - int(pruned.sum())  # entries equal to the threshold still to prune
    ties = torch.nonzero(scores == threshold).flatten()[:missing]
    pruned[ties] = True
    return pruned


class PruningMethod(ABC):
    """Strategy: how to cut a tensor into units and score them (lower = pruned first)."""

    structured: bool = False

    def __init__(self, dim: int = 0) -> None:
        self.dim = dim

    def units(self, tensor: torch.Tensor) -> int:
        return tensor.size(self._dim(tensor)) if self.structured else tensor.numel()

    @abstractmethod
    def scores(self, tensor: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One float score per unit, 1-D, on the tensor's device."""

    def expand(self, pruned_units: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        """Float keep-mask shaped like ``tensor`` from a boolean pruned-units vector."""
        keep = (~pruned_units).to(tensor.dtype)
        if not self.structured:
            return keep.view(tensor.shape)
        shape = [1] * tensor.dim()
        shape[self._dim(tensor)] = -1
        return keep.view(shape).expand(tensor.shape).contiguous()

    def compute_mask(
        self, tensor: torch.Tensor, amount: int | float, *, name: str = "tensor",
        generator: torch.Generator | None = None, previous: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Keep-mask that prunes ``amount`` of ``tensor``'s units (those already pruned by the
        keep-mask ``previous`` first: see ``sticky_scores``)."""
        k = amount_to_count(amount, self.units(tensor), name)
        return self.expand(smallest_k(self.sticky_scores(tensor, generator, previous), k),
                           tensor)

    def sticky_scores(
        self, tensor: torch.Tensor, generator: torch.Generator | None,
        previous: torch.Tensor | None,
    ) -> torch.Tensor:
        """Scores where units pruned by ``previous`` come first (-inf): a gradual schedule
        asking for at least as many units never revives a pruned one, whatever the method
        (random scores are redrawn, and a kept weight may be exactly 0 too)."""
        scores = self.scores(tensor, generator)
        if previous is None:
            return scores
        return scores.masked_fill(self.pruned_units(previous), -math.inf)

    def pruned_units(self, mask: torch.Tensor) -> torch.Tensor:
        """Boolean per unit: whether the keep-mask removes it (a whole slice, if structured)."""
        if not self.structured:
            return mask.flatten() == 0
        return (self._slices(mask) == 0).all(dim=1)

    def _dim(self, tensor: torch.Tensor) -> int:
        if not -tensor.dim() <= self.dim < max(tensor.dim(), 1):
            raise PruningError(
                f"dim {self.dim} is out of range for a tensor of shape {list(tensor.shape)} "
                f"(allowed: {-tensor.dim()}..{tensor.dim() - 1})"
            )
        return self.dim % max(tensor.dim(), 1)

    def _slices(self, tensor: torch.Tensor) -> torch.Tensor:
        """(slices, elements per slice) view of the tensor along ``dim``."""
        return tensor.detach().movedim(self._dim(tensor), 0).reshape(self.units(tensor), -1)


def _random_scores(
    count: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    # Drawn on the CPU so that a seed gives the same masks on every device.
    return torch.rand(count, generator=generator).to(device)


class L1Unstructured(PruningMethod):
    def scores(self, tensor: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return tensor.detach().abs().flatten()


class RandomUnstructured(PruningMethod):
    def scores(self, tensor: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return _random_scores(tensor.numel(), generator, tensor.device)


class LnStructured(PruningMethod):
    structured = True

    def __init__(self, n: Norm = 2, dim: int = 0) -> None:
        super().__init__(dim)
        self.ord = math.inf if n == "inf" else 2 if n == "fro" else n

    def scores(self, tensor: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        slices = self._slices(tensor).float()
        norms: torch.Tensor = torch.linalg.vector_norm(slices, ord=self.ord, dim=1)
        return norms


class RandomStructured(PruningMethod):
    structured = True

    def scores(self, tensor: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return _random_scores(self.units(tensor), generator, tensor.device)


def make_method(method: str, *, n: Norm = 2, dim: int = 0) -> PruningMethod:
    """The strategy for a spec's ``method`` string."""
    if method == "l1_unstructured":
        return L1Unstructured()
    if method == "random_unstructured":
        return RandomUnstructured()
    if method == "ln_structured":
        return LnStructured(n, dim)
    if method == "random_structured":
        return RandomStructured(dim=dim)
    raise PruningError(
        f"unknown method {method!r}; allowed: l1_unstructured, random_unstructured, "
        "ln_structured, random_structured"
    )


def global_masks(
    method: PruningMethod, tensors: Sequence[torch.Tensor], amount: int | float, *,
    generator: torch.Generator | None = None,
    previous: Sequence[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """One threshold across all ``tensors`` (as prune.global_unstructured): exactly ``k`` of
    their units pruned in total, ties broken by position in the concatenation; units pruned by
    the ``previous`` keep-masks first."""
    if not tensors:
        return []
    if method.structured:
        raise PruningError("structured methods are layerwise; global scope is unstructured only")
    before = previous if previous is not None else [None] * len(tensors)
    scores = torch.cat([method.sticky_scores(t, generator, p).to(tensors[0].device)
                        for t, p in zip(tensors, before, strict=True)])
    k = amount_to_count(amount, scores.numel(), "the targeted tensors together")
    pruned = smallest_k(scores, k)
    sizes = [t.numel() for t in tensors]
    return [
        method.expand(part.to(t.device), t)
        for part, t in zip(torch.split(pruned, sizes), tensors, strict=True)
    ]


# Functional wrappers, one per method (as torch.nn.utils.prune): each returns the keep-mask.
def l1_unstructured(tensor: torch.Tensor, amount: int | float) -> torch.Tensor:
    return L1Unstructured().compute_mask(tensor, amount)


def random_unstructured(
    tensor: torch.Tensor, amount: int | float, generator: torch.Generator | None = None
) -> torch.Tensor:
    return RandomUnstructured().compute_mask(tensor, amount, generator=generator)


def ln_structured(
    tensor: torch.Tensor, amount: int | float, n: Norm = 2, dim: int = 0
) -> torch.Tensor:
    return LnStructured(n, dim).compute_mask(tensor, amount)


def random_structured(
    tensor: torch.Tensor, amount: int | float, dim: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    return RandomStructured(dim=dim).compute_mask(tensor, amount, generator=generator)
