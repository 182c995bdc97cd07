"""Shrink over torchvision's CNN families at full size (issue 18's targets), on this machine.

Each family is built from torchvision (``weights=None``, ``num_classes=10``, BatchNorm
statistics randomised so a slicing mistake shows), saved scripted and traced, and shrunk
at amount 0.5 (ln_structured L2) over all its conv layers (the Linear head excluded), as a
job would: ``worker.engine.shrink.prepare`` then ``apply``. Per row: the refusal (op and
line), or the shrunk archive reloaded with plain ``torch.jit.load``, its largest
difference to the masked model on 4 random images (target: <= 1e-4), FLOPs per image
before and after (``measure.count_flops``: the job's counter), and for ResNet-18,
VGG-11-BN and MobileNetV2 the latency at batch 64 of the dense and shrunk archives timed in
alternation (``measure.time_alternating``, as the report does; target >= 1.4x; ShuffleNetV2
is timed too, without a target). ``--update`` re-measures some rows of the results file.

Inputs are 3 x 32 x 32 (``input.channels: 3, size: 32``), except AlexNet (64: its stride-4
stem leaves nothing of 32) and Inception-v3 (75, its smallest).

    .venv/bin/python -m benchmarks.zoo_shrink [--families resnet18 ...] \
        [--out benchmarks/results/zoo_shrink_cpu.json]
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings
from typing import Any

import torch
import torchvision.models as tv
from torch import nn

from benchmarks.engine_finetune import machine
from core.jobs.spec import InputSpec, PruningSpec
from testkit.zoo import compile_at
from worker.engine import measure
from worker.engine.errors import EngineError
from worker.engine.shrink import prepare
from worker.engine.shrink.rewrite import zero_removed

FAMILIES = ["alexnet", "vgg11_bn", "resnet18", "resnext50_32x4d", "densenet121", "googlenet",
            "inception_v3", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small",
            "efficientnet_b0", "regnet_y_400mf", "squeezenet1_1", "shufflenet_v2_x0_5",
            "convnext_tiny"]
TIMED = {"resnet18", "vgg11_bn", "mobilenet_v2", "shufflenet_v2_x0_5"}
SIZE = {"alexnet": 64, "inception_v3": 75}
CPU = torch.device("cpu")


def build(name: str) -> nn.Module:
    extra = {"aux_logits": False, "init_weights": False} if name in (
        "googlenet", "inception_v3") else {}
    torch.manual_seed(0)
    model: nn.Module = tv.get_model(name, weights=None, num_classes=10, **extra)
    with torch.no_grad():
        for sub in model.modules():
            if isinstance(sub, nn.BatchNorm2d):
                sub.running_mean.normal_(0, 0.1)
                sub.running_var.uniform_(0.5, 1.5)
                sub.weight.uniform_(0.5, 1.5)
                sub.bias.normal_(0, 0.1)
    return model.eval()


def conv_weights(model: torch.jit.ScriptModule) -> list[str]:
    """Every Conv2d weight of a TorchScript model (scripted or traced): all its conv layers,
    the Linear head left out."""
    return [f"{n}.weight" for n, m in model.named_modules()
            if getattr(m, "original_name", "") == "Conv2d"]


def reload(model: nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    loaded: torch.jit.ScriptModule = torch.jit.load(buffer)
    return loaded.eval()


def logits(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def row(name: str, how: str) -> dict[str, Any]:
    size = SIZE.get(name, 32)
    spec_in = InputSpec(channels=3, size=size)
    dense = compile_at(build(name), how, size)
    convs = conv_weights(dense)
    spec = PruningSpec(method="ln_structured", scope="layerwise", amount=0.5, dim=0,
                       shrink=True, include=convs)
    masked = reload(dense)
    started = time.perf_counter()
    try:
        prepared = prepare(dense, spec, None, seed=0)
    except EngineError as exc:
        return {"family": name, "how": how, "input": list(spec_in.shape),
                "refused": f"{exc.code.value}: {exc.message}"}
    flops_before = measure.count_flops(masked, spec_in, CPU)[0]
    zero_removed(masked, prepared.plans)
    shrunk = reload(prepared.apply().model)  # the archive as downloaded, plain torch.jit.load
    seconds = time.perf_counter() - started
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gap = (logits(shrunk(x)) - logits(masked(x))).abs().max().item()
    flops_after = measure.count_flops(shrunk, spec_in, CPU)[0]
    out: dict[str, Any] = {
        "family": name, "how": how, "input": list(spec_in.shape), "shrink_s": round(seconds, 1),
        "max_abs_diff_vs_masked": gap, "flops": {"dense": flops_before, "shrunk": flops_after},
        "flops_reduction": round(1 - flops_after / flops_before, 3),
        "parameters": {"dense": sum(p.numel() for p in masked.parameters()),
                       "shrunk": sum(p.numel() for p in shrunk.parameters())}}
    if name in TIMED and how == "trace":
        batch = measure.example_batch(spec_in, 64, CPU)
        original = reload(dense_again(name, how, size))
        with torch.inference_mode():
            slow, fast = measure.time_alternating(
                [lambda: original(batch), lambda: shrunk(batch)], CPU)
        out["latency_ms_batch_64"] = {"dense": slow.model_dump(), "shrunk": fast.model_dump(),
                                      "speedup": round(slow.p50 / fast.p50, 2)}
    return out


def dense_again(name: str, how: str, size: int) -> torch.jit.ScriptModule:
    return compile_at(build(name), how, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=FAMILIES)
    parser.add_argument("--how", nargs="*", default=["script", "trace"])
    parser.add_argument("--out", default="benchmarks/results/zoo_shrink_cpu.json")
    parser.add_argument("--update", action="store_true",
                        help="replace only the rows measured now in --out, keep the others")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
    result: dict[str, Any] = {"machine": machine(CPU), "rows": []}
    for name in args.families:
        for how in args.how:
            result["rows"].append(row(name, how))
            print(json.dumps(result["rows"][-1])[:400], flush=True)
    if args.update:
        result = _updated(args.out, result)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


def _updated(path: str, new: dict[str, Any]) -> dict[str, Any]:
    """The rows in ``path`` with those measured now put in their place (same family and
    compile); the file's machine stays, and ``updated`` says which rows were measured when,
    on what."""
    with open(path) as f:
        old = json.load(f)
    fresh = {(r["family"], r["how"]): r for r in new["rows"]}
    measured = [f"{family} {how}" for family, how in fresh]
    rows = [fresh.pop((r["family"], r["how"]), r) for r in old["rows"]]
    updates = [*old.get("updated", []), {"rows": measured, "machine": new["machine"]}]
    return {"machine": old["machine"], "rows": rows + list(fresh.values()), "updated": updates}


if __name__ == "__main__":
    main()
