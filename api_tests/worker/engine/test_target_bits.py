"""A bytes target on the compressed download (``target_bits``): unstructured sparsity x
k-means bits, the choice among the candidates tried, the bytes as the download has them, and
``target_unreachable`` with its frontier. A small TorchScript model on MNIST, a few hundred
training images per candidate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from core.jobs.error_codes import JobErrorCode
from core.jobs.formats import ModelFormat
from core.jobs.report import TargetTrial
from core.jobs.spec import JobSpec
from core.settings import Settings
from worker.engine import (
    compressed,
    data,
    pipeline,
    pruning,
    quantize,
    saving,
    scripting,
    target_bits,
)
from worker.engine.data import Split
from worker.engine.errors import EngineError


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _upload(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "toy.pt"
    torch.jit.save(scripting.script(_Toy()), str(path))
    return path


def _spec(bound: int, drop: float, trials: int = 3) -> JobSpec:
    return JobSpec.model_validate({
        "device": "cpu", "finetune": {"epochs": 1}, "search": {"max_trials": trials},
        "target": {"bytes": {"max": bound, "format": "compressed"}, "max_accuracy_drop": drop,
                   "trial_images": 500, "quantize_bits": [6, 4]}})


def _trial(size: float, val: float, *, bound: float = 100.0, floor: float = 0.9
           ) -> TargetTrial:
    meets, within = size <= bound, val >= floor
    return TargetTrial(strategy="kmeans", level=0.9, widths={}, sparsity=0.9, bits=6,
                       constraint_value=size, meets_constraint=meets, val_accuracy=val,
                       test_accuracy=0.0, within_drop=within, met=meets and within, seconds=0)


def test_choose_takes_the_smallest_file_within_the_floor() -> None:
    trials = [_trial(90, 0.95), _trial(60, 0.85), _trial(70, 0.91), _trial(120, 0.99)]
    assert target_bits.choose(trials) == 2  # 60 B is below the floor; 70 B is the smallest
    # none within the floor: the most accurate one meeting the bound (its full fine-tune
    # may recover), and none meeting the bound: no choice
    assert target_bits.choose([_trial(90, 0.8), _trial(60, 0.85), _trial(120, 0.99)]) == 1
    assert target_bits.choose([_trial(120, 0.99)]) is None


def test_sparsity_is_rounded_up_so_the_reported_level_is_the_measured_one() -> None:
    assert target_bits._sparsity(0.12345) == 0.8766
    assert target_bits._sparsity(0.0) == target_bits.MAX_SPARSITY


def test_fit_prunes_the_fewest_more_weights_that_bring_the_file_under_the_bound() -> None:
    torch.manual_seed(0)
    model = _Toy()
    spec = _spec(bound=1, drop=0.9)
    targets = pruning.find_targets(model, spec.pruning)
    half = spec.pruning.model_copy(update={"amount": 0.5})
    pruning.apply_masks(targets, pruning.compute_masks(targets, half))
    pruned_before = [t.param == 0 for t in targets]
    tables = quantize.quantize(model, targets, target_bits.quantize_spec(spec, 4, epochs=0),
                               spec.finetune, None, seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    size = len(compressed.encode(saving.cpu_state_dict(model), tables))
    assert target_bits.fit(model, targets, spec, 4, size * 2) == pytest.approx(0.5)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), model.state_dict().values(),
                                                strict=True))  # fits already: untouched
    sparsity = target_bits.fit(model, targets, spec, 4, size * 0.7)
    assert 0.5 < sparsity < 0.9
    assert all(bool(t.param[p].eq(0).all()) for t, p in zip(targets, pruned_before,
                                                            strict=True))  # none revived
    tables = quantize.quantize(model, targets, target_bits.quantize_spec(spec, 4, epochs=0),
                               spec.finetune, None, seed=0)
    assert len(compressed.encode(saving.cpu_state_dict(model), tables)) <= size * 0.7


def test_a_compressed_target_chooses_the_smallest_candidate_within_the_floor(
    tmp_path: Path, engine_settings: Settings
) -> None:
    spec = _spec(bound=9000, drop=0.9)
    result = pipeline.run_job(_upload(tmp_path), spec, tmp_path / "out",
                              settings=engine_settings)
    report = result.report
    found = report.target
    assert found is not None and found.candidates == "sparsity_bits" and found.chosen is not None
    assert len(found.trials) == 3 and found.groups == []
    assert {t.bits for t in found.trials} == {6, 4}
    floor = found.dense_accuracy - found.max_accuracy_drop
    for t in found.trials:
        assert t.meets_constraint == (t.constraint_value <= 9000)
        assert t.within_drop == (t.val_accuracy >= floor - 1e-12)
    passing = [i for i, t in enumerate(found.trials) if t.met]
    assert passing, found.trials
    assert found.chosen == min(passing, key=lambda i: found.trials[i].constraint_value)
    chosen = found.trials[found.chosen]
    # the final bytes are the download's, and it decodes to the quantised weights
    download = result.outputs[ModelFormat.COMPRESSED]
    assert found.final_value == download.stat().st_size <= 9000
    assert report.compressed is not None and report.compressed.bytes == found.final_value
    assert report.cost is not None and report.cost.after.bytes["compressed"] == found.final_value
    assert {row.name: row.bits for row in report.tensors} == {
        "fc1.weight": chosen.bits, "fc2.weight": chosen.bits}
    assert chosen.sparsity is not None
    assert report.targeted.sparsity == pytest.approx(chosen.sparsity, abs=1e-4)
    validation = report.accuracy.validation
    assert validation is not None
    assert found.final_val_accuracy == validation.after_finetune.accuracy
    decoded = compressed.decode(download.read_bytes())
    assert int((decoded["fc1.weight"] != 0).sum()) + int((decoded["fc2.weight"] != 0).sum()) \
        == report.targeted.elements - report.targeted.zeros


def test_an_unreachable_compressed_target_fails_with_its_frontier(
    tmp_path: Path, engine_settings: Settings
) -> None:
    spec = _spec(bound=400, drop=0.9, trials=2)  # 1% of the weights still weigh more
    with pytest.raises(EngineError) as caught:
        pipeline.run_job(_upload(tmp_path), spec, tmp_path / "out", settings=engine_settings)
    assert caught.value.code is JobErrorCode.TARGET_UNREACHABLE
    assert "no candidate meets bytes <= 400" in caught.value.message
    assert "the cheapest candidate within the drop has bytes" in caught.value.message
    frontier = caught.value.report
    assert frontier is not None and "output" not in frontier
    trials = frontier["target"]["trials"]
    assert [(t["sparsity"], t["bits"]) for t in trials] == [
        (target_bits.MAX_SPARSITY, 6), (target_bits.MAX_SPARSITY, 4)]
    assert all(not t["meets_constraint"] and t["constraint_value"] > 400 for t in trials)
    assert frontier["target"]["chosen"] is None
    assert not (tmp_path / "out" / ModelFormat.COMPRESSED.file_name).exists()


def test_no_decision_of_a_compressed_target_reads_the_test_split(
    tmp_path: Path, engine_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same job with the reported half's labels scrambled decides exactly the same."""
    spec, upload = _spec(bound=9000, drop=0.9, trials=2), _upload(tmp_path)
    first = pipeline.run_job(upload, spec, tmp_path / "a", settings=engine_settings).report
    halves = data.test_halves

    def scrambled(test: Split) -> tuple[Split, Split]:
        validation, reported = halves(test)
        return validation, Split(reported.images, (reported.labels + 1) % 10)

    monkeypatch.setattr(data, "test_halves", scrambled)
    second = pipeline.run_job(upload, spec, tmp_path / "b", settings=engine_settings).report
    a, b = first.target, second.target
    assert a is not None and b is not None

    def decided(trials: list[TargetTrial]) -> list[tuple[object, ...]]:
        return [(t.sparsity, t.bits, t.val_accuracy, t.constraint_value) for t in trials]

    assert decided(a.trials) == decided(b.trials)
    assert (a.chosen, a.final_sparsity, a.final_value) == (b.chosen, b.final_sparsity,
                                                           b.final_value)
    assert [t.test_accuracy for t in a.trials] != [t.test_accuracy for t in b.trials]
