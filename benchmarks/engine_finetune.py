"""Fine-tuning throughput of the engine, against references measured in the same run.

1. Batch 64: one epoch of masked fine-tuning of the 784-256-128-10 MLP (30% global L1, Adam
   lr 1e-3) with the engine, and with the conventional pipeline users write: torchvision
   MNIST + ToTensor/Normalize + DataLoader(shuffle=True), torch.nn.utils.prune hooks, same
   model, optimizer and loss. Prints both times and their ratio (target: >= 6x on CPU).
2. Batch 256: the engine's epoch time against the FLOP bound, i.e. the epoch's matmul FLOPs
   (forward, weight gradients, input gradients of fc2/fc3) divided by this machine's measured
   fp32 matmul rate (2048x2048 torch.mm, best of several). Target: within 1.5x.

    PRUNER_MNIST_ROOT=../shared/datasets .venv/bin/python benchmarks/engine_finetune.py \
        [--device cpu|cuda] [--out benchmarks/results/engine_finetune_cpu.json]

Prints one JSON object (and writes it to --out when given), with the machine recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from core.jobs.spec import FinetuneSpec, InputSpec, PruningSpec
from core.settings import get_settings
from worker.engine import data, pruning, registry, training

LAYERS = [(784, 256), (256, 128), (128, 10)]
SAMPLES = 60_000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def pruned_mlp(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.build("mnist_mlp").to(device)


def conventional_epoch(root: Path, batch_size: int, device: torch.device) -> float:
    """The hand-written script: transforms per sample, DataLoader, prune hooks."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    loader = DataLoader(datasets.MNIST(str(root), train=True, download=False, transform=tf),
                        batch_size=batch_size, shuffle=True)
    model = pruned_mlp(device)
    params = [(model.fc1, "weight"), (model.fc2, "weight"), (model.fc3, "weight")]
    prune.global_unstructured(params, prune.L1Unstructured, amount=0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch() -> None:
        model.train()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()

    return timed(epoch, device)


def engine_epoch(train: data.Split, batch_size: int, device: torch.device) -> tuple[float, int]:
    """One epoch through the engine's loop; returns (seconds, pruned entries not zero after)."""
    model = pruned_mlp(device)
    spec = PruningSpec(amount=0.3)
    targets = pruning.find_targets(model, spec)
    masks = pruning.compute_masks(targets, spec)
    pruning.apply_masks(targets, masks)
    hold = training.MaskHold([t.param for t in targets], [masks[t.name] for t in targets])
    ft = FinetuneSpec(epochs=1, batch_size=batch_size)
    seconds = timed(lambda: training.finetune(model, train, ft, hold, seed=0), device)
    revived = sum(int((t.param[masks[t.name] == 0] != 0).sum()) for t in targets)
    return seconds, revived


def matmul_rate(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """Best measured fp32 FLOP/s of an n x n matmul."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(5):
        best = min(best, timed(lambda: [a @ b for _ in range(reps)], device))
    return 2 * n**3 * reps / best


def matmul_only_epoch(device: torch.device, batch_size: int = 256) -> float:
    """Seconds for just the epoch's matmuls, shape for shape (forward, weight gradients, input
    gradients of fc2/fc3): the floor for this model at this batch size on this machine."""
    steps = -(-SAMPLES // batch_size)
    acts = [torch.randn(batch_size, i, device=device) for i, _ in LAYERS]  # layer inputs
    grads = [torch.randn(batch_size, o, device=device) for _, o in LAYERS]  # output grads
    weights = [torch.randn(o, i, device=device) for i, o in LAYERS]

    def epoch() -> None:
        for _ in range(steps):
            for a, g, w in zip(acts, grads, weights, strict=True):
                a @ w.t()  # forward
                g.t() @ a  # weight gradient
            for g, w in zip(grads[1:], weights[1:], strict=True):
                g @ w  # input gradient (fc1's input needs none)

    return min(timed(epoch, device) for _ in range(3))


def epoch_flops() -> int:
    """Matmul FLOPs of one epoch: forward + weight grads, + input grads except for fc1."""
    per_sample = sum(2 * i * o * 2 for i, o in LAYERS) + sum(2 * i * o for i, o in LAYERS[1:])
    return per_sample * SAMPLES


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "platform": platform.platform(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_before": os.getloadavg(),
    }


def main() -> None:
    if "OMP_WAIT_POLICY" not in os.environ:
        # As in a job process, where worker.engine sets it before torch loads: re-run so that
        # both pipelines below run under the engine's OpenMP setting.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeats", type=int, default=3, help="engine epochs per batch size")
    parser.add_argument("--skip-conventional", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    root = get_settings().mnist_root
    result: dict[str, Any] = {"benchmark": "engine_finetune", "machine": machine(device)}

    load_s = timed(lambda: data.load_split(root, True, device, InputSpec()), device)
    train = data.load_split(root, True, device, InputSpec())
    result["engine_data_load_s"] = load_s  # once per process, then cached

    for batch_size in (64, 256):
        runs = [engine_epoch(train, batch_size, device) for _ in range(args.repeats)]
        result[f"engine_b{batch_size}_epoch_s"] = [s for s, _ in runs]
        result[f"engine_b{batch_size}_revived_weights"] = sum(r for _, r in runs)

    best64 = min(result["engine_b64_epoch_s"])
    if not args.skip_conventional:
        conventional = conventional_epoch(root, 64, device)
        result["conventional_b64_epoch_s"] = conventional
        result["speedup_b64"] = conventional / best64
        result["target_speedup_b64"] = 6.0

    rate = matmul_rate(device)
    bound = epoch_flops() / rate
    best256 = min(result["engine_b256_epoch_s"])
    result.update({
        "matmul_fp32_flops_per_s": rate,
        "epoch_matmul_flops": epoch_flops(),
        "flop_bound_b256_epoch_s": bound,
        "matmul_only_b256_epoch_s": matmul_only_epoch(device),
        "engine_b256_vs_flop_bound": best256 / bound,
        "target_vs_flop_bound": 1.5,
        "masks_hold": result["engine_b64_revived_weights"] == 0
        and result["engine_b256_revived_weights"] == 0,
    })
    result["machine"]["load_average_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
