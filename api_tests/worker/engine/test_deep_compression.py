"""The quantise phase on real MNIST images (a few thousand): the reported accuracy is the one
recomputed from the decoded compressed file, pruned entries stay zero, and the report gains
the pre-quantisation accuracy, bits, codebook sizes and the compression ratio."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from api_tests.report_html.factories import make_report
from api_tests.support.stacks import mnist_root
from client.decode import decode_file
from core.jobs.formats import ModelFormat
from core.jobs.report import Report
from core.jobs.spec import InputSpec, JobSpec, PruningSpec
from worker.engine import data, pruning, registry, saving, training
from worker.engine.data import Split
from worker.engine.deep_compression import annotate, compressed_report, quantize_phase
from worker.engine.training import MaskHold


def _splits() -> tuple[Split, Split]:
    cpu = torch.device("cpu")
    train = data.load_split(mnist_root(), True, cpu, InputSpec())
    test = data.load_split(mnist_root(), False, cpu, InputSpec())
    return Split(train.images[:3000], train.labels[:3000]), Split(test.images[:500],
                                                                   test.labels[:500])


@pytest.mark.parametrize("quantize", [
    {"method": "kmeans", "bits": 4, "epochs": 1},
    {"method": "linear", "bits": 4, "epochs": 1},
])
def test_quantised_accuracy_is_the_decoded_files(quantize: dict[str, object],
                                                 tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, test = _splits()
    model = registry.build("mnist_mlp")
    spec = JobSpec.model_validate({"pruning": {"amount": 0.8}, "finetune": {"epochs": 1},
                                   "quantize": quantize, "device": "cpu"})
    targets = pruning.find_targets(model, PruningSpec(amount=0.8))
    masks = pruning.compute_masks(targets, spec.pruning)
    pruning.apply_masks(targets, masks)
    hold = MaskHold([t.param for t in targets], [masks[t.name] for t in targets])
    training.finetune(model, train, spec.finetune, hold, seed=0)
    before = training.evaluate(model, test)
    phase = quantize_phase(model, targets, spec, train, test, before)
    assert phase is not None
    outputs = saving.save_all(model, ModelFormat.COMPRESSED, tmp_path, phase.tables)
    fresh = registry.build("mnist_mlp")
    fresh.load_state_dict({k: torch.from_numpy(v.copy())
                           for k, v in decode_file(outputs[ModelFormat.COMPRESSED]).items()})
    assert training.evaluate(fresh, test) == phase.after
    assert all(bool((t.param.detach()[masks[t.name] == 0] == 0).all()) for t in targets)

    rows = annotate(Report.model_validate(make_report(
        ["fc1.weight", "fc2.weight", "fc3.weight"])).tensors, phase.tables)
    assert [(t.bits, t.codebook_size) for t in rows] == [
        (4, 16 if quantize["method"] == "kmeans" else None)] * 3
    ratio = compressed_report(outputs, 235146)
    assert ratio is not None
    assert ratio.ratio == 4 * 235146 / outputs[ModelFormat.COMPRESSED].stat().st_size
