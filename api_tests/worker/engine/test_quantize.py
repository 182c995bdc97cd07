"""Trained quantisation: k-means codebooks and their summed centroid gradients, linear
per-channel integers and the straight-through estimator, against hand computations; pruned
entries stay exactly +0.0 through a whole quantise-and-fine-tune."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from core.jobs.spec import FinetuneSpec, JobSpec, QuantizeSpec
from worker.engine import quantize
from worker.engine.data import Split
from worker.engine.pruning import Target


def test_codebook_linear_init_and_lloyd() -> None:
    # bits 2: linspace(-1, 1, 4) = [-1, -1/3, 1/3, 1]. Midpoints -2/3, 0, 2/3 put
    # {-1, -0.9} in 0, nothing in 1 (it keeps -1/3), {0.1, 0.2} in 2, {0.9, 1} in 3.
    values = torch.tensor([-1.0, -0.9, 0.1, 0.2, 0.9, 1.0])
    codebook, codes = quantize.fit_codebook(values, 2)
    assert torch.allclose(codebook, torch.tensor([-0.95, -1 / 3, 0.15, 0.95]), atol=1e-7)
    assert codes.tolist() == [0, 0, 2, 2, 3, 3]


def test_centroid_gradients_are_summed_over_the_weights_sharing_them() -> None:
    weight = nn.Parameter(torch.zeros(2, 3))
    # Stored positions 0, 2, 3, 4 (flat) with codes 1, 0, 1, 0; positions 1 and 5 pruned.
    hold = quantize.CodebookHold([weight], [torch.tensor([0, 2, 3, 4])],
                                 [torch.tensor([1, 0, 1, 0])], [torch.tensor([-1.0, 2.0])])
    hold.after_step()
    assert weight.detach().tolist() == [[2.0, 0.0, -1.0], [2.0, -1.0, 0.0]]
    (weight * torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])).sum().backward()
    hold.before_step()
    # Centroid 0 is shared by positions 2 and 4 (gradients 3 and 5); centroid 1 by 0 and 3.
    assert hold.codebooks[0].grad is not None
    assert hold.codebooks[0].grad.tolist() == [8.0, 5.0]


def test_a_centroid_step_moves_every_weight_sharing_it_and_no_pruned_one() -> None:
    weight = nn.Parameter(torch.zeros(2, 3))
    hold = quantize.CodebookHold([weight], [torch.tensor([0, 2, 3, 4])],
                                 [torch.tensor([1, 0, 1, 0])], [torch.tensor([-1.0, 2.0])])
    hold.after_step()
    optimizer = torch.optim.SGD([weight, *hold.codebooks], lr=0.5)
    (weight * torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])).sum().backward()
    hold.before_step()
    optimizer.step()
    hold.after_step()
    # codebook [-1 - 0.5 * 8, 2 - 0.5 * 5] = [-5, -0.5]
    assert weight.detach().tolist() == [[-0.5, 0.0, -5.0], [-0.5, -5.0, 0.0]]


def test_linear_per_channel_symmetric() -> None:
    # 4 bits: q in [-7, 7]; row 0 scale 0.875 / 7 = 0.125, -0.3 / 0.125 = -2.4 -> -2;
    # row 1 is all zero: scale 1, zeros stay +0.0.
    weight = torch.tensor([[0.875, -0.3, 0.0], [0.0, -0.0, 0.0]])
    values, scales = quantize.linear_quantize(weight, 4)
    assert values.tolist() == [[0.875, -0.25, 0.0], [0.0, 0.0, 0.0]]
    assert scales.tolist() == [0.125, 1.0]
    assert not torch.signbit(values[values == 0]).any()  # the -0.0 came back +0.0


def test_ste_steps_the_latent_weights_and_requantises() -> None:
    weight = nn.Parameter(torch.tensor([[0.875, -0.3, 0.0]]))
    hold = quantize.SteHold([weight], [torch.tensor([[True, True, False]])], [4])
    hold.after_step()
    assert weight.detach().tolist() == [[0.875, -0.25, 0.0]]
    optimizer = torch.optim.SGD([weight], lr=0.1)
    weight.grad = torch.ones(1, 3)
    hold.before_step()
    optimizer.step()
    hold.after_step()
    # latent [0.875 - 0.1, -0.3 - 0.1, 0]; the pruned entry's gradient was masked.
    assert torch.allclose(hold.latent[0], torch.tensor([[0.775, -0.4, 0.0]]))
    expected, _ = quantize.linear_quantize(torch.tensor([[0.775, -0.4, 0.0]]), 4)
    assert torch.equal(weight.detach(), expected)


def test_bits_resolution_override_then_layer_kind_then_default() -> None:
    spec = QuantizeSpec(bits=6, layer_bits={"Conv2d": 8}, overrides={"fc2.*": 3})
    assert [quantize.bits_for("fc2.weight", "Linear", spec),
            quantize.bits_for("conv1.weight", "Conv2d", spec),
            quantize.bits_for("fc1.weight", "Linear", spec)] == [3, 8, 6]


def _tiny_split(n: int = 64) -> Split:
    generator = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 8, generator=generator),
                 torch.randint(0, 10, (n,), generator=generator))


@pytest.mark.parametrize("method", ["kmeans", "linear"])
def test_masks_stay_exact_through_quantise_and_fine_tune(method: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    targets = [Target(f"{i}.weight", model[i].weight, "Linear") for i in (0, 2)]
    with torch.no_grad():
        for t in targets:  # prune half, leaving -0.0 where negative weights were
            t.param.mul_((torch.rand_like(t.param) > 0.5).float())
    pruned = [t.param.detach() == 0 for t in targets]
    spec = QuantizeSpec(method=method, bits=3, epochs=2, lr=1e-2)  # type: ignore[arg-type]
    tables = quantize.quantize(model, targets, spec, FinetuneSpec(batch_size=16),
                               _tiny_split(), seed=0)
    for target, zero in zip(targets, pruned, strict=True):
        weight = target.param.detach()
        assert torch.equal(weight[zero], torch.zeros(int(zero.sum())))
        assert not torch.signbit(weight[zero]).any()
        assert torch.unique(weight[~zero & (weight != 0)]).numel() <= (
            8 if method == "kmeans" else 8 * weight.shape[0])
    assert {t.kind for t in tables.values()} == {"codebook" if method == "kmeans" else "linear"}


@pytest.mark.parametrize(("block", "message"), [
    ({"method": "linear", "bits": 1}, "linear takes bits 2..8, got 1 (bits)"),
    ({"method": "kmeans", "layer_bits": {"Conv2d": 9}}, "kmeans takes bits 1..8, got 9 (Conv2d)"),
])
def test_bits_out_of_range_are_refused_naming_where(block: dict[str, object],
                                                    message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        QuantizeSpec.model_validate(block)


def test_a_quantise_fine_tune_needs_the_training_split() -> None:
    with pytest.raises(ValueError, match="set finetune.epochs > 0 or quantize.epochs 0"):
        JobSpec.model_validate({"finetune": {"epochs": 0}, "quantize": {"epochs": 1}})
