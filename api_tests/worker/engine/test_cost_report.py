"""report.cost through run_job (no fine-tuning, so no training: a few seconds): present,
consistent with the rest of the report and with the files written, and the compact download
at most a quarter of the dense one at 90% sparsity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.jobs.spec import JobSpec
from core.settings import Settings
from worker.engine import cli, registry
from worker.engine import measure as cost_module
from worker.engine.pipeline import run_job

CPU = torch.device("cpu")


def test_cost_is_present_and_consistent(engine_settings: Settings, tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "mlp.safetensors"
    from safetensors.torch import save_file

    save_file(dict(registry.build("mnist_mlp").state_dict()), str(path))
    spec = JobSpec.model_validate({
        "architecture": "mnist_mlp", "device": "cpu", "finetune": {"epochs": 0},
        "pruning": {"method": "l1_unstructured", "scope": "global", "amount": 0.9},
    })
    result = run_job(path, spec, tmp_path / "out", settings=engine_settings)
    report = result.report
    assert report.cost is not None
    before, after = report.cost.before, report.cost.after
    assert before.parameters == after.parameters == report.all_parameters.elements == 235_146
    assert before.nonzero_parameters == 235_146
    assert after.nonzero_parameters == 235_146 - report.all_parameters.zeros
    assert before.flops == after.flops == 2 * (784 * 256 + 256 * 128 + 128 * 10)
    assert before.effective_flops == before.flops
    # 90% of every weight gone (global L1 over the weights): ~10% of the FLOPs remain.
    assert after.effective_flops == pytest.approx(0.1 * after.flops, rel=0.15)
    assert report.cost.speedup is None  # zeros only: same shapes, no speed claimed
    assert after.bytes == {fmt: p.stat().st_size for fmt, p in result.outputs.items()}
    assert after.bytes[result.primary] == report.output.bytes
    assert after.bytes["sparse_safetensors"] <= 0.25 * before.bytes["state_dict"]
    assert before.bytes["sparse_safetensors"] >= 0.99 * before.bytes["safetensors"]
    for c in (before, after):
        assert set(c.latency_ms) == {"batch_1", "batch_256"} and c.device == "cpu"
        assert all(0 < lat.p50 <= lat.p90 for lat in c.latency_ms.values())
    assert "cost" in report.timings_s
    line = cli.cost_summary(report.cost)
    # the smallest download: the entropy-coded compressed one, before and after
    assert line.startswith("cost: 235146/235146 -> ") and line.count("(compressed)") == 2


def test_a_shrunk_model_reports_fewer_flops_and_a_speedup(
    engine_settings: Settings, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    path = tmp_path / "lenet5.pt"
    torch.save(registry.build("lenet5").state_dict(), path)
    spec = JobSpec.model_validate({
        "architecture": "lenet5", "device": "cpu", "finetune": {"epochs": 0},
        "pruning": {"method": "ln_structured", "dim": 0, "amount": 0.5, "shrink": True,
                    "include": ["conv*.weight"]},
    })
    report = run_job(path, spec, tmp_path / "out", settings=engine_settings).report
    assert report.cost is not None and report.shrink is not None
    before, after = report.cost.before, report.cost.after
    assert before.flops == 833_040 and after.flops < before.flops
    assert after.parameters == report.shrink.parameters_after < before.parameters
    assert after.nonzero_parameters <= after.parameters
    assert report.cost.speedup is not None
    assert set(report.cost.speedup) == {"batch_1", "batch_256"}
    for key, ratio in report.cost.speedup.items():
        assert ratio == pytest.approx(before.latency_ms[key].p50 / after.latency_ms[key].p50)
    # Both timed at the end of the job, in alternation: the same number of runs each.
    assert before.latency_method == after.latency_method == cost_module.paired_method(CPU)
    for key in ("batch_1", "batch_256"):
        assert before.latency_ms[key].runs == after.latency_ms[key].runs
