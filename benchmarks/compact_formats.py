"""Compact downloads of unstructured sparsity: candidate formats on size and load time.

The 784-256-128-10 MLP (as the engine's ``mnist_mlp``), its weights pruned by global
magnitude to each sparsity, written in every candidate format; for each: file bytes (and as a
fraction of the dense torch.save file), and the median time to read it back to the exact dense
tensors (checked with torch.equal) with the documented plain-PyTorch lines:

- ``state_dict`` / ``safetensors``: today's dense files;
- ``csr_int32_state_dict``: every 2-D weight as a torch.sparse_csr tensor with int32 indices,
  torch.save; read: ``{k: v.to_dense() for k, v in torch.load(p, weights_only=True).items()}``
  (torch validates the indices of sparse tensors on every weights_only load);
- ``bitmask_safetensors``: the shipped ``sparse_safetensors`` (worker/engine/sparse_layout.py);
- ``gzip:<format>``: HTTP ``Content-Encoding: gzip`` on a format (zlib level 6, what
  Starlette's GZipMiddleware uses): the wire bytes; the client's decompression is timed in the
  load, the server's compression is reported as ``encode_ms`` (paid per download unless cached).

    .venv/bin/python benchmarks/compact_formats.py [--out benchmarks/results/compact_formats.json]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import io
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from worker.engine import registry
from worker.engine import sparse_layout as compact

SPARSITIES = (0.5, 0.7, 0.9, 0.95, 0.99)
REPEATS = 15
Tensors = dict[str, torch.Tensor]


def pruned_mlp(sparsity: float) -> Tensors:
    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in registry.build("mnist_mlp").state_dict().items()}
    weights = [v for k, v in state.items() if k.endswith("weight")]
    magnitudes = torch.cat([w.abs().reshape(-1) for w in weights])
    threshold = magnitudes.kthvalue(int(sparsity * magnitudes.numel())).values
    for w in weights:
        w[w.abs() <= threshold] = 0
    return state


def csr(state: Tensors) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in state.items():
        if t.dim() == 2:
            s = t.to_sparse_csr()
            t = torch.sparse_csr_tensor(s.crow_indices().int(), s.col_indices().int(),
                                        s.values(), s.shape)
        out[name] = t
    return out


def load_csr(path: Path) -> Tensors:
    return {k: v.to_dense() for k, v in torch.load(path, weights_only=True).items()}


def load_bitmask(path: Path) -> Tensors:  # the three documented lines, verbatim
    f = load_file(str(path))
    return {k: torch.zeros(8 * len(f[k + "@mask"]), dtype=v.dtype).masked_scatter_(((f[k + "@mask"][:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).bool().flatten(), v)[: f[k + "@shape"].prod()].view(f[k + "@shape"].tolist()) if k + "@mask" in f else v for k, v in f.items() if "@" not in k}  # noqa: E501


def load_torch(path: Path) -> Tensors:
    return dict(torch.load(path, weights_only=True))


def load_safetensors(path: Path) -> Tensors:
    return dict(load_file(str(path)))


def gunzip_then(load: Callable[[Path], Tensors], scratch: Path) -> Callable[[Path], Tensors]:
    def run(path: Path) -> Tensors:  # as a client does: decompress, then open the file
        plain = scratch / f"plain-{path.name}"
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        return load(plain)

    return run


def median_ms(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


Loader = Callable[[Path], Tensors]


def write_candidates(state: Tensors, folder: Path) -> dict[str, tuple[Path, Loader]]:
    files: dict[str, tuple[Path, Loader]] = {
        "state_dict": (folder / "dense.pt", load_torch),
        "safetensors": (folder / "dense.safetensors", load_safetensors),
        "csr_int32_state_dict": (folder / "csr.pt", load_csr),
        "bitmask_safetensors": (folder / "bitmask.safetensors", load_bitmask),
    }
    torch.save(state, files["state_dict"][0])
    save_file(state, str(files["safetensors"][0]))
    torch.save(csr(state), files["csr_int32_state_dict"][0])
    compact.save(state, files["bitmask_safetensors"][0])
    return files


def measure(sparsity: float, folder: Path) -> dict[str, Any]:
    state = pruned_mlp(sparsity)
    files = write_candidates(state, folder)
    dense_bytes = files["state_dict"][0].stat().st_size
    rows: dict[str, Any] = {}
    for name, (path, load) in list(files.items()):
        buffer = io.BytesIO()
        encode_ms = median_ms(functools.partial(gzip.compress, path.read_bytes(), 6))
        with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(path.read_bytes())
        zipped = folder / f"{path.name}.gz"
        zipped.write_bytes(buffer.getvalue())
        for label, file, reader, extra in (
            (name, path, load, {}),
            (f"gzip:{name}", zipped, gunzip_then(load, folder), {"encode_ms": encode_ms}),
        ):
            loaded = reader(file)
            assert set(loaded) == set(state), label
            assert all(torch.equal(loaded[k], state[k]) for k in state), label
            size = file.stat().st_size
            load_ms = median_ms(functools.partial(reader, file))
            rows[label] = {"bytes": size, "of_dense": round(size / dense_bytes, 4),
                           "load_ms": round(load_ms, 3),
                           **{k: round(v, 3) for k, v in extra.items()}}
    return {"sparsity": sparsity, "dense_state_dict_bytes": dense_bytes, "formats": rows}


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu_model": cpu, "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "platform": platform.platform(), "load_average_before": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # torch's "sparse CSR is beta" / "validating" notices
    result: dict[str, Any] = {"benchmark": "compact_formats", "model": "784-256-128-10 MLP",
                              "machine": machine(), "repeats": REPEATS, "results": []}
    with tempfile.TemporaryDirectory() as scratch:
        for sparsity in SPARSITIES:
            folder = Path(scratch) / str(sparsity)
            folder.mkdir()
            result["results"].append(measure(sparsity, folder))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
