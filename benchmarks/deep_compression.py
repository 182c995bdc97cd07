"""Deep Compression through the engine: prune, quantise, entropy-code; int8 and ONNX beside.

Trains a dense LeNet-300-100 and the registry ``lenet5`` in memory (seeded, Adam, cosine lr,
on the 55000 train images left after the jobs' 5000-image validation hold-out), then runs one
job each through ``run_job`` (as a worker does): AGP to 95% with distillation, then
``quantize`` (k-means, linear initialisation, centroids fine-tuned: 6 bits for LeNet-300-100;
8 bits conv / 5 bits fc for LeNet-5, the paper's settings) and ``deploy`` (ONNX in ONNX
Runtime, torchao int8). Records the compressed download's size against the dense fp32
tensors, test error before and after quantisation, the runtimes' accuracy and CPU latency,
and, per tensor, what each structure and entropy coder would have cost (the encoder keeps the
smallest by measurement; the table shows why zstd).

    PYTHONPATH=. PRUNER_MNIST_ROOT=/work/shared/datasets python benchmarks/deep_compression.py \
        [--seeds 0 1 2] [--dense-epochs 6] [--epochs 8] [--quick] [--finetune '{"augment": {}}']
        [--dense-finetune '{"augment": {"shift": 2}}']

Writes benchmarks/results/deep_compression.json (rewritten after every run).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

from core.jobs.formats import ModelFormat
from core.jobs.spec import FinetuneSpec, InputSpec, JobSpec
from core.settings import Settings
from worker.engine import compressed, data, registry, training
from worker.engine.pipeline import run_job

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "deep_compression.json"
BATCH = 128
QUANTIZE = {
    "lenet_300_100": {"method": "kmeans", "bits": 6, "epochs": 2, "lr": 1e-4},
    "lenet5": {"method": "kmeans", "bits": 5, "layer_bits": {"Conv2d": 8}, "epochs": 2,
               "lr": 1e-4},
}
TARGETS = {"lenet_300_100": (40.0, 0.0160), "lenet5": (39.0, 0.0080)}  # ratio, test error


def dense_model(name: str, epochs: int, seed: int, settings: Settings, folder: Path,
                extra: dict[str, Any] | None = None) -> float:
    """Trains the dense model the jobs start from; ``extra`` adds fine-tune fields (e.g.
    ``{"augment": {"shift": 2}}`` for a better-trained dense LeNet-5)."""
    torch.manual_seed(seed)
    model = registry.build(name)
    full = data.load_split(settings.mnist_root, True, torch.device("cpu"), InputSpec())
    train, _validation = data.hold_out(full, 5000, seed=seed)  # the jobs' own hold-out
    spec = FinetuneSpec.model_validate({
        "epochs": epochs, "lr": 1e-3, "lr_schedule": "cosine", "batch_size": BATCH,
        "validation_size": 0, **(extra or {})})
    training.finetune(model, train, spec, training.MaskHold([], []), seed=seed)
    torch.save(model.state_dict(), folder / f"{name}-{seed}.pt")
    test = data.load_split(settings.mnist_root, False, torch.device("cpu"), InputSpec())
    return 1.0 - training.evaluate(model, test).accuracy


def job_spec(name: str, epochs: int, seed: int, deploy: bool = True,
             finetune: dict[str, Any] | None = None) -> JobSpec:
    """The job: AGP to 95% with distillation, then quantisation; ``finetune`` adds to (or
    replaces) the fine-tune block's fields, e.g. ``{"augment": {}}``."""
    extra: dict[str, Any] = {"deploy": {}} if deploy else {}
    return JobSpec.model_validate({
        "architecture": name, "device": "cpu", "seed": seed,
        "pruning": {"amount": 0.95, "schedule": {"kind": "agp", "end": 0.5,
                                                 "every_steps": 100}},
        "finetune": {"epochs": epochs, "lr": 1e-3, "lr_schedule": "cosine",
                     "batch_size": BATCH, "distill": {}, **(finetune or {})},
        "quantize": QUANTIZE[name], **extra})


def coders(data_bytes: bytes) -> dict[str, int]:
    """The same streams under each general-purpose coder (best settings)."""
    return {"zstd-19": len(zstandard.ZstdCompressor(level=19).compress(data_bytes)),
            "zstd-22": len(zstandard.ZstdCompressor(level=22).compress(data_bytes)),
            "zlib-9": len(zlib.compress(data_bytes, 9)),
            "lzma-9e": len(lzma.compress(data_bytes, preset=9 | lzma.PRESET_EXTREME))}


def streams(path: Path) -> list[dict[str, Any]]:
    """Per quantised tensor: bytes of each structure/codes candidate under each coder."""
    state = compressed.decode(path.read_bytes())
    rows = []
    for name, tensor in state.items():
        flat = tensor.reshape(-1).numpy()
        positions = np.flatnonzero(flat).astype(np.int64)
        values = flat[positions]
        if tensor.dim() < 2 or np.unique(values).size > 256:
            continue
        codes = np.searchsorted(np.unique(values), values)
        bits = max(int(np.ceil(np.log2(max(np.unique(values).size, 2)))), 1)
        rows.append({
            "name": name, "nnz": int(positions.size), "numel": int(flat.size),
            "structure": {"bitmask": coders(compressed.bitmask(positions, flat.size)),
                          "gaps": coders(compressed.gaps(positions))},
            "codes": {"packed": coders(compressed.pack_codes(codes, bits)),
                      "bytes": coders(codes.astype(np.uint8).tobytes())},
            "raw_bytes": {"bitmask": (flat.size + 7) // 8, "gaps": len(
                compressed.gaps(positions)), "packed": (positions.size * bits + 7) // 8,
                "bytes": int(positions.size)}})
    return rows


def one_run(name: str, seed: int, epochs: int, folder: Path, settings: Settings,
            deploy: bool = True, finetune: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = job_spec(name, epochs, seed, deploy, finetune)
    started = time.perf_counter()
    result = run_job(folder / f"{name}-{seed}.pt", spec, folder / f"out-{name}-{seed}",
                     settings=settings)
    report = result.report
    assert report.compressed is not None and report.cost is not None
    runtimes = report.cost.runtimes or {}
    accuracy = report.accuracy
    assert accuracy.before_quantization is not None
    return {
        "architecture": name, "seed": seed, "spec": spec.model_dump(mode="json"),
        "sparsity": round(report.targeted.sparsity, 5),
        "dense_test_error": round(1 - accuracy.before.accuracy, 5),
        "pruned_test_error": round(1 - accuracy.before_quantization.accuracy, 5),
        "quantised_test_error": round(1 - accuracy.after_finetune.accuracy, 5),
        "compressed_bytes": report.compressed.bytes,
        "dense_fp32_bytes": report.compressed.dense_fp32_bytes,
        "ratio": round(report.compressed.ratio, 2),
        "bytes": report.cost.after.bytes,
        "tensors": [{"name": t.name, "bits": t.bits, "sparsity": round(t.sparsity, 5)}
                    for t in report.tensors],
        "runtimes": {k: v.model_dump(mode="json") for k, v in runtimes.items()},
        "streams": streams(result.outputs[ModelFormat.COMPRESSED]),
        "seconds": round(time.perf_counter() - started, 1),
        "timings_s": {k: round(v, 1) for k, v in report.timings_s.items()},
    }


def reencode(folder: Path, results: Path) -> None:
    """Rewrite the stored runs' compressed sizes with the current encoder, from the final
    weights each job saved (``model.safetensors`` in ``folder``): the same weights, the
    container as it is now. The codebooks are the weights' distinct non-zero values."""
    from safetensors.torch import load_file

    from worker.engine.quantize import QuantizedTensor

    result = json.loads(results.read_text())
    for run in result["runs"]:
        out = folder / f"out-{run['architecture']}-{run['seed']}"
        state = load_file(str(out / "model.safetensors"))
        tables = {t["name"]: QuantizedTensor(t["name"], "codebook", t["bits"],
                                             torch.unique(state[t["name"]][state[t["name"]] != 0]))
                  for t in run["tensors"] if t["bits"] is not None}
        encoded = compressed.encode(state, tables)
        back = compressed.decode(encoded)
        assert all(back[k].numpy().tobytes() == state[k].numpy().tobytes() for k in tables)
        path = out / "model.reencoded.prz"
        path.write_bytes(encoded)
        run["compressed_bytes_first_encoder"] = run["compressed_bytes"]
        run["compressed_bytes"] = len(encoded)
        run["ratio"] = round(run["dense_fp32_bytes"] / len(encoded), 2)
        run["streams"] = streams(path)
    result["reencoded"] = ("compressed_bytes re-measured with the current encoder from each "
                           "job's saved weights (compressed_bytes_first_encoder: as the job "
                           "wrote them)")
    result["summary"] = summary(result["runs"])
    results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (ratio, error) in TARGETS.items():
        mine = [r for r in runs if r["architecture"] == name]
        if not mine:
            continue
        ratios = [r["ratio"] for r in mine]
        errors = [r["quantised_test_error"] for r in mine]
        out[name] = {"seeds": [r["seed"] for r in mine],
                     "ratio_mean": round(float(np.mean(ratios)), 2),
                     "ratio_min": min(ratios), "test_error_mean": round(float(np.mean(errors)), 5),
                     "test_error_max": max(errors),
                     "target": {"ratio": ratio, "test_error": error},
                     "met": bool(np.mean(ratios) >= ratio and np.mean(errors) <= error)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--dense-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=8, help="pruning fine-tune epochs")
    parser.add_argument("--archs", nargs="+", default=list(TARGETS))
    parser.add_argument("--quick", action="store_true", help="1 epoch everywhere (smoke)")
    parser.add_argument("--reencode", type=Path, metavar="DIR",
                        help="re-measure the stored runs' files from DIR (printed at start)")
    parser.add_argument("--dense-from", type=Path, metavar="DIR",
                        help="the dense models of an earlier run (DIR printed at its start)")
    parser.add_argument("--conv-bits", type=int, help="LeNet-5's conv bits (paper: 8)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-deploy", action="store_true",
                        help="skip ONNX/int8 (the compression figures only)")
    parser.add_argument("--finetune", type=json.loads, default={}, metavar="JSON",
                        help='fields added to the jobs\' finetune block, e.g. \'{"augment": {}}\'')
    parser.add_argument("--dense-finetune", type=json.loads, default={}, metavar="JSON",
                        help="fields added to the dense training's fine-tune block")
    args = parser.parse_args()
    if args.reencode is not None:
        reencode(args.reencode, args.results)
        return
    if args.conv_bits is not None:
        QUANTIZE["lenet5"]["layer_bits"] = {"Conv2d": args.conv_bits}
    if args.quick:
        args.dense_epochs = args.epochs = 1
    settings = Settings(worker_device="cpu")
    folder = Path(tempfile.mkdtemp(prefix="deep-compression-"))
    print(f"models and job outputs in {folder}", flush=True)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "loadavg_at_start": os.getloadavg(),
                    "note": "2-core VM shared with other work: latencies and wall times are "
                            "upper bounds; compare latencies only within a row"},
        "recipe": {"dense_epochs": args.dense_epochs, "dense_extra": args.dense_finetune,
                   "prune_epochs": args.epochs,
                   "finetune_extra": args.finetune, "quantize": QUANTIZE},
        "dense": [], "runs": []}
    for seed in args.seeds:
        for name in args.archs:
            dense_started = time.perf_counter()
            if args.dense_from is not None:  # trained by an earlier run: scored again
                model = registry.build(name)
                model.load_state_dict(torch.load(args.dense_from / f"{name}-{seed}.pt"))
                torch.save(model.state_dict(), folder / f"{name}-{seed}.pt")
                test = data.load_split(settings.mnist_root, False, torch.device("cpu"),
                                       InputSpec())
                error = 1.0 - training.evaluate(model, test).accuracy
            else:
                error = dense_model(name, args.dense_epochs, seed, settings, folder,
                                    args.dense_finetune)
            result["dense"].append({"architecture": name, "seed": seed,
                                    "test_error": round(error, 5),
                                    "seconds": round(time.perf_counter() - dense_started, 1)})
            result["runs"].append(one_run(name, seed, args.epochs, folder, settings,
                                          not args.no_deploy, args.finetune))
            result["summary"] = summary(result["runs"])
            args.results.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps({k: v for k, v in result["runs"][-1].items()
                              if k not in ("spec", "streams", "runtimes", "tensors")}),
                  flush=True)
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
