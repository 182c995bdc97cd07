"""A bytes target on the ``compressed`` download: unstructured sparsity x k-means bits.

Channel removal (``targets.py``) is what lowers latency and FLOPs; the smallest *files* come
from Deep Compression's recipe (Han et al. 2016): unstructured sparsity, then k-means weight
sharing, entropy-coded. So a bytes target on ``compressed`` searches those two knobs:

1. **Bisection per bits.** For each of ``target.quantize_bits`` (default 8, 6, 5, 4), the lowest
   sparsity (the spec's unstructured method and scope) whose quantised file meets the bound
   with a ``MARGIN`` is bisected geometrically on the kept share (``BISECT_STEPS``): each
   step prunes the dense weights, fits the codebooks without fine-tuning and encodes the file
   with the download's own encoder (``compressed.encode``), so every size is counted, never
   estimated. The margin leaves room for what fine-tuning does to the codes' entropy.
2. **Trials** (at most ``JobSpec.target_trials``). A short fine-tune moves the file's size
   (the codes' entropy changes with the weights): the *drift*, measured / predicted bytes.
   Each bits is tried at the sparsity bisected for the aim divided by the largest drift of
   the trials before it; then each bits again, **re-aimed** by its own trial's drift, which
   may land sparser or looser. Each trial is pruned from the dense weights, fine-tuned
   briefly with the masks held (one pass over ``target.trial_images``), quantised with one
   pass of centroid fine-tuning over the same images, encoded and decoded (the model scored
   is the decoded one); its bytes are the encoded file's, its validation accuracy decides.
3. **Choice** (``choose``): among the trials meeting the bound *and* within the drop, the
   smallest file (the most compression the accuracy floor allows); when none is within the
   drop after its short fine-tune, the most accurate one meeting the bound (the full
   fine-tune may recover it, as in the channel search). The chosen sparsity is then pruned
   with ``pruning.schedule`` and fine-tuned with ``finetune``, ``fit`` to the bound (its
   smallest remaining weights pruned until the file fits again), and quantised at the chosen
   bits in the job's quantise phase; ``strategies.settle`` checks the download's bytes and the
   decoded model's validation drop (else ``target_unreachable``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from core.jobs.report import TargetTrial
from core.jobs.spec import JobSpec, PruningSpec, QuantizeSpec
from worker.engine import deep_compression, pruning, quantize, training
from worker.engine.data import Split
from worker.engine.errors import Cancelled
from worker.engine.trials import TrialScope

MAX_SPARSITY = 0.99  # a candidate keeps at least 1% of the targeted weights
BISECT_STEPS = 8  # on log(kept share) between 1 and 1 - MAX_SPARSITY: about 2% apart
MARGIN = 0.03  # the bisection aims 3% under the bound: fine-tuning moves the codes' entropy
STRATEGY, REAIMED = "kmeans", "kmeans_reaimed"


def quantize_spec(spec: JobSpec, bits: int, *, epochs: int | None = None) -> QuantizeSpec:
    """k-means at ``bits``, with the ``quantize`` block's other settings (or the defaults)."""
    base = spec.quantize or QuantizeSpec()
    update: dict[str, object] = {"method": "kmeans", "bits": bits}
    if epochs is not None:
        update["epochs"] = epochs
    return base.model_copy(update=update)


@dataclass
class BitsExplorer:
    """Builds, measures and scores (sparsity, bits) candidates from the dense weights."""

    model: nn.Module  # the upload: its weights are restored from ``_dense`` at every build
    targets: list[pruning.Target]  # its targeted weights
    scope: TrialScope  # its bound: bytes of the compressed file
    _dense: dict[str, torch.Tensor] = field(init=False)
    _sizes: dict[tuple[float, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._dense = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self) -> None:
        """The dense weights back (after the search, before the chosen one's pruning)."""
        self.model.load_state_dict(self._dense)

    def build(self, sparsity: float, bits: int, train: Split | None, seed: int) -> int:
        """Prune the dense weights to ``sparsity``, fine-tune on ``train`` (masks held),
        quantise at ``bits`` (a centroid pass on ``train``), load the decoded file: its
        bytes."""
        if self.scope.should_cancel is not None and self.scope.should_cancel():
            raise Cancelled()
        self.restore()
        masks = pruning.compute_masks(self.targets, self.pruning(sparsity),
                                      torch.Generator().manual_seed(seed))
        pruning.apply_masks(self.targets, masks)
        if train is not None:
            tune = self.scope.spec.finetune.model_copy(update={"epochs": 1})
            hold = training.MaskHold([t.param for t in self.targets],
                                     [masks[t.name] for t in self.targets])
            training.finetune(self.model, train, tune, hold, seed=seed,
                              should_cancel=self.scope.should_cancel)
        q = quantize_spec(self.scope.spec, bits, epochs=1 if train is not None else 0)
        tables = quantize.quantize(self.model, self.targets, q, self.scope.spec.finetune, train,
                                   seed=seed, should_cancel=self.scope.should_cancel)
        return deep_compression.load_decoded(self.model, tables)

    def pruning(self, sparsity: float) -> PruningSpec:
        return self.scope.spec.pruning.model_copy(update={"amount": sparsity, "overrides": {}})

    def size(self, sparsity: float, bits: int) -> int:
        """The file's bytes at ``sparsity`` and ``bits`` without fine-tuning (cached)."""
        key = (sparsity, bits)
        if key not in self._sizes:
            self._sizes[key] = self.build(sparsity, bits, None, self.scope.spec.seed)
        return self._sizes[key]

    def lowest_sparsity(self, bits: int, aim: float) -> float:
        """The lowest sparsity whose file (without fine-tuning) is at most ``aim`` bytes
        (``MAX_SPARSITY`` when even that one is not), bisected on log(kept share)."""
        if self.size(0.0, bits) <= aim:
            return 0.0
        if self.size(MAX_SPARSITY, bits) > aim:
            return MAX_SPARSITY
        kept_ok, kept_bad = 1 - MAX_SPARSITY, 1.0  # kept shares meeting / missing the aim
        for _ in range(BISECT_STEPS):
            kept = math.sqrt(kept_ok * kept_bad)
            if self.size(_sparsity(kept), bits) <= aim:
                kept_ok = kept
            else:
                kept_bad = kept
        return _sparsity(kept_ok)

    def run(self) -> list[TargetTrial]:
        """The trials, at most ``target_trials``: each bits at the sparsity aimed at the bound
        less ``MARGIN``, divided by the largest drift seen so far (measured / predicted bytes
        of the trials before it: what a short fine-tune does to the file); then each bits
        again, re-aimed by its own trial's drift, where that moves it."""
        assert self.scope.spec.target is not None
        limit, aim = self.scope.spec.target_trials, self.scope.bound * (1 - MARGIN)
        trials: list[TargetTrial] = []
        drift = 1.0
        for bits in self.scope.spec.target.quantize_bits[:limit]:
            sparsity = self.lowest_sparsity(bits, aim / drift)
            trials.append(self.trial(len(trials) + 1, sparsity, bits))
            drift = max(drift, self.drift(trials[-1]))
        for first in list(trials):
            if len(trials) >= limit:
                break
            assert first.bits is not None
            again = self.lowest_sparsity(first.bits, aim / self.drift(first))
            if all((t.sparsity, t.bits) != (again, first.bits) for t in trials):
                trials.append(self.trial(len(trials) + 1, again, first.bits, REAIMED))
        return trials

    def drift(self, trial: TargetTrial) -> float:
        """The trial's file against the same candidate's before any fine-tuning."""
        assert trial.sparsity is not None and trial.bits is not None
        return trial.constraint_value / self.size(trial.sparsity, trial.bits)

    def trial(self, index: int, sparsity: float, bits: int, strategy: str = STRATEGY
              ) -> TargetTrial:
        started = self.scope.begin(index)
        size = self.build(sparsity, bits, self.scope.images(index), self.scope.spec.seed + index)
        return self.scope.scored(self.model, started, float(size), strategy=strategy,
                                 level=sparsity, sparsity=sparsity, bits=bits)


FIT_MARGIN = 0.005  # the centroid fine-tune after the fit moves only the codebooks' bytes
FIT_STEPS = 6  # on log(kept share), down to half the weights kept: about 1% apart


@torch.no_grad()
def fit(model: nn.Module, targets: list[pruning.Target], spec: JobSpec, bits: int,
        bound: float) -> float:
    """After the chosen candidate's full fine-tune its file drifts from the trial's (the weights
    moved, and with them the codes' entropy): prune its smallest remaining weights (the spec's
    method and scope, pruned ones first) until its quantised file, without the centroid
    fine-tune, is at most the bound less ``FIT_MARGIN``, bisected on log(kept share). The
    model is left pruned (not quantised); its sparsity over the targets is returned."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before = {t.name: t.param != 0 for t in targets}
    elements = sum(t.param.numel() for t in targets)
    kept_now = sum(int(m.sum()) for m in before.values()) / elements
    aim = bound * (1 - FIT_MARGIN)

    def size(kept: float) -> int:
        model.load_state_dict(state)
        if kept < kept_now:
            amount = spec.pruning.model_copy(update={"amount": 1 - kept, "overrides": {}})
            masks = pruning.compute_masks(targets, amount, torch.Generator().manual_seed(
                spec.seed), previous=before)
            pruning.apply_masks(targets, masks)
        tables = quantize.quantize(model, targets, quantize_spec(spec, bits, epochs=0),
                                   spec.finetune, None, seed=spec.seed)
        return deep_compression.load_decoded(model, tables)

    chosen = kept_now
    if size(kept_now) > aim:
        kept_ok, kept_bad = kept_now / 2, kept_now  # fitting (assumed) / too large
        for _ in range(FIT_STEPS):
            kept = math.sqrt(kept_ok * kept_bad)
            if size(kept) <= aim:
                kept_ok = kept
            else:
                kept_bad = kept
        chosen = kept_ok  # the least pruning known to fit
    model.load_state_dict(state)
    if chosen < kept_now:
        amount = spec.pruning.model_copy(update={"amount": 1 - chosen, "overrides": {}})
        pruning.apply_masks(targets, pruning.compute_masks(
            targets, amount, torch.Generator().manual_seed(spec.seed), previous=before))
    return 1 - sum(int((t.param != 0).sum()) for t in targets) / elements


def choose(trials: list[TargetTrial]) -> int | None:
    """The smallest file meeting the bound within the drop; else the most accurate candidate
    meeting the bound; None when no candidate meets it."""
    met = [i for i, t in enumerate(trials) if t.met]
    if met:
        return min(met, key=lambda i: (trials[i].constraint_value, -trials[i].val_accuracy))
    meeting = [i for i, t in enumerate(trials) if t.meets_constraint]
    return max(meeting, key=lambda i: trials[i].val_accuracy) if meeting else None


def _sparsity(kept: float) -> float:
    """The sparsity keeping ``kept`` of the weights, rounded up to 4 decimals (never above
    ``MAX_SPARSITY``), so a reported level reproduces the measured model."""
    return min(math.ceil((1 - kept) * 10_000) / 10_000, MAX_SPARSITY)
