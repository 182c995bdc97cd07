"""``prune-model``: run the engine locally on a model file.

    prune-model model.pt --architecture mnist_mlp --amount 0.3 --epochs 2 -o out/
    prune-model model.pt --dataset digits.safetensors --amount 0.5 -o out/

``--dataset FILE`` fine-tunes and evaluates on a dataset file (safetensors or ``.npz`` in the
format of docs/datasets.md) instead of MNIST: it is judged by the API's checker
(``core.datasets.check_dataset``) first, and a refused file exits 2 naming the array at fault.
A spec JSON file (``--spec``) and flags combine; flags win. Writes the pruned model in every
format it can take plus ``report.json`` to the output folder, prints a one-line summary, and
shows a progress bar when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.datasets import DatasetRejected, check_dataset
from core.datasets.record import DatasetRecord
from core.jobs.cost import Cost, CostReport
from core.jobs.formats import SAME_FORMAT, ModelFormat
from core.jobs.lifecycle import utcnow
from core.jobs.report import Progress, Report
from core.jobs.spec import JobSpec, Method, Scope
from core.settings import Settings, get_settings
from core.storage.digest import sha256_file

EXIT_SPEC = 2  # the spec is invalid (pydantic) or impossible (EngineError)
EXIT_CANCELLED = 130


def _amount(text: str) -> int | float:
    """'0.3' -> fraction, '300' -> count (as the spec's JSON number/integer)."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prune-model", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="TorchScript, torch.save state_dict or safetensors")
    p.add_argument("--spec", type=Path, help="spec JSON file (flags override its fields)")
    p.add_argument("-o", "--output-dir", type=Path, default=Path("pruned"))
    p.add_argument("--report", type=Path, help="report path (default: OUTPUT_DIR/report.json)")
    p.add_argument("--html", type=Path, nargs="?", const=True, metavar="PATH",
                   help="also write the report as a self-contained HTML page "
                   "(default PATH: OUTPUT_DIR/report.html)")
    p.add_argument("--architecture", help="registry architecture of a state_dict upload")
    p.add_argument("--method", choices=[m.value for m in Method])
    p.add_argument("--scope", choices=[s.value for s in Scope])
    p.add_argument("--amount", type=_amount, help="fraction in [0, 1) or whole-number count")
    p.add_argument("--n", choices=["1", "2", "inf", "fro"], help="ln_structured norm")
    p.add_argument("--dim", type=int, help="structured: dimension whose slices are pruned")
    p.add_argument("--include", action="append", help="fnmatch pattern to target (repeatable)")
    p.add_argument("--exclude", action="append", help="fnmatch pattern to skip (repeatable)")
    p.add_argument("--shrink", action="store_true", default=None,
                   help="remove the pruned channels (structured, dim 0): a smaller model")
    p.add_argument("--epochs", type=int)
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--flatten", action="store_true", default=None, help="feed (N, 784)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--output-format", choices=[SAME_FORMAT, *(f.value for f in ModelFormat)])
    p.add_argument("--dataset", type=Path, metavar="FILE",
                   help="a dataset file (safetensors or .npz, docs/datasets.md) to fine-tune "
                   "and evaluate on instead of MNIST")
    p.add_argument("--mnist-root", type=Path, help="default: PRUNER_MNIST_ROOT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def local_dataset(path: Path, settings: Settings) -> DatasetRecord:
    """A dataset file on disk as the engine takes an upload: judged by the same checker as
    at upload (``DatasetRejected`` names the array), its id derived from its sha256."""
    info = check_dataset(path, settings)
    sha256 = sha256_file(path)
    return DatasetRecord(id="ds-" + sha256[:32], tenant="local", created_at=utcnow(),
                         filename=path.name, bytes=path.stat().st_size, sha256=sha256,
                         info=info)


def spec_from_args(args: argparse.Namespace, dataset_id: str | None = None) -> JobSpec:
    """The spec file's fields, updated by the flags given (``dataset_id``: the ``--dataset``
    file's); validated once by pydantic."""
    raw: dict[str, Any] = json.loads(args.spec.read_text()) if args.spec else {}
    sections = {
        "pruning": {"method": args.method, "scope": args.scope, "amount": args.amount,
                    "n": None if args.n is None else (int(args.n) if args.n.isdigit() else args.n),
                    "dim": args.dim, "include": args.include, "exclude": args.exclude,
                    "shrink": args.shrink},
        "finetune": {"epochs": args.epochs, "optimizer": args.optimizer, "lr": args.lr,
                     "batch_size": args.batch_size, "weight_decay": args.weight_decay},
        "input": {"flatten": args.flatten},
    }
    for section, fields in sections.items():
        given = {k: v for k, v in fields.items() if v is not None}
        if given:
            raw[section] = {**raw.get(section, {}), **given}
    top = {"architecture": args.architecture, "device": args.device, "seed": args.seed,
           "output_format": args.output_format}
    raw.update({k: v for k, v in top.items() if v is not None})
    if dataset_id is not None:
        raw["data"] = {**raw.get("data", {}), "dataset": dataset_id}
    return JobSpec.model_validate(raw)


class _ProgressBar:
    """tqdm bar over fine-tuning steps; phase changes show in its description."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, file=sys.stderr, unit="step", dynamic_ncols=True)

    def __call__(self, progress: Progress) -> None:
        if progress.phase == "finetuning" and progress.steps:
            if self.bar.total != progress.steps:
                self.bar.reset(total=progress.steps)
            self.bar.set_description(f"finetuning epoch {progress.epoch}/{progress.epochs}")
            self.bar.n = progress.step or 0
            if progress.loss is not None:
                self.bar.set_postfix(loss=f"{progress.loss:.4f}")
            self.bar.refresh()
        else:
            self.bar.set_description(progress.phase)
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    if args.mnist_root is not None:
        settings = settings.model_copy(update={"mnist_root": args.mnist_root})
    try:
        record = local_dataset(args.dataset, settings) if args.dataset else None
    except (DatasetRejected, OSError) as exc:
        print(f"prune-model: invalid dataset {args.dataset}: {exc}", file=sys.stderr)
        return EXIT_SPEC
    try:
        spec = spec_from_args(args, record.id if record else None)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"prune-model: invalid spec: {exc}", file=sys.stderr)
        return EXIT_SPEC

    from worker.engine.datasets import UploadedDataset  # torch only past argument checks
    from worker.engine.errors import Cancelled, EngineError
    from worker.engine.pipeline import run_job

    dataset = UploadedDataset(args.dataset, record) if record else None
    bar = _ProgressBar() if sys.stderr.isatty() and not args.no_progress else None
    try:
        result = run_job(args.model, spec, args.output_dir, settings=settings, on_progress=bar,
                         dataset=dataset)
    except EngineError as exc:
        print(f"prune-model: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_SPEC
    except (Cancelled, KeyboardInterrupt):
        print("prune-model: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        if bar is not None:
            bar.close()
    report_path = args.report or args.output_dir / "report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(result.report.model_dump_json(indent=2))
    html_path = _write_html(args, result.report) if args.html is not None else None
    r = result.report
    print(
        f"{r.targeted.sparsity:.1%} of {r.targeted.elements} targeted weights zeroed; "
        f"accuracy {r.accuracy.before.accuracy:.2%} -> {r.accuracy.after_pruning.accuracy:.2%} "
        f"(pruned) -> {r.accuracy.after_finetune.accuracy:.2%} (fine-tuned); "
        f"model: {result.outputs[result.primary]}; report: {report_path}"
        + (f"; page: {html_path}" if html_path else "")
    )
    if r.shrink is not None:
        print(f"shrunk: {r.shrink.parameters_before} -> {r.shrink.parameters_after} "
              f"parameters; widths {json.dumps(r.shrink.widths)}")
    if r.cost is not None:
        print(cost_summary(r.cost))
    return 0


def cost_summary(cost: CostReport) -> str:
    """One line: parameters, FLOPs, smallest file and latency, before -> after."""
    b, a = cost.before, cost.after

    def smallest(c: Cost) -> str:
        fmt = min(c.bytes, key=lambda f: c.bytes[f])
        return f"{c.bytes[fmt] / 1e3:.0f} kB ({fmt})"

    def latency(c: Cost) -> str:
        return "/".join(f"{c.latency_ms[k].p50:.2f}" for k in ("batch_1", "batch_256"))

    speedup = "" if cost.speedup is None else ", speedup " + ", ".join(
        f"{v:.2f}x at {k.replace('_', ' ')}" for k, v in cost.speedup.items()
    )
    return (
        f"cost: {b.nonzero_parameters}/{b.parameters} -> {a.nonzero_parameters}/{a.parameters} "
        f"non-zero parameters; {b.flops / 1e6:.2f} -> {a.flops / 1e6:.2f} MFLOPs per image "
        f"({a.effective_flops / 1e6:.2f} effective); smallest file {smallest(b)} -> "
        f"{smallest(a)}; p50 latency {latency(b)} -> {latency(a)} ms at batch 1/256 on "
        f"{a.device}{speedup}"
    )


def _write_html(args: argparse.Namespace, report: Report) -> Path:
    from report_html import render_report

    # --html alone gives True (a str const would go through type=Path and become ".")
    path: Path = args.output_dir / "report.html" if args.html is True else args.html
    path.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(report.model_dump(mode="json"), subtitle=f"Model: {args.model.name}")
    path.write_text(page, encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
