"""``pruner``: the service from a shell or a pipeline.

    pruner submit mlp.pt --arch mnist_mlp --spec spec.json --wait -o out/
    pruner status JOB | pruner list --status running | pruner watch JOB
    pruner cancel JOB | pruner report JOB | pruner download JOB -o out/
    pruner download JOB --format compressed | pruner decode JOB-pruned.prz -o model.safetensors
    pruner dataset upload digits.safetensors | pruner dataset list | show ID | delete ID

The API's URL and key come from ``--url`` / ``--api-key`` or PRUNER_URL / PRUNER_API_KEY.
Exit status: 0 done (the job succeeded, for ``--wait`` and ``watch``); 1 the job failed
(``code: message`` on stderr); 2 a usage or request error (``status code: detail``); 3 the job
was cancelled; 130 interrupted while following a job (the job goes on).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from client.api import PrunerClient
from client.errors import ApiError, JobCancelled, JobFailed
from client.progress import ProgressView, describe
from core.jobs.formats import ModelFormat
from core.jobs.public import JobPublic
from core.jobs.record import JobStatus

EXIT_FAILED, EXIT_ERROR, EXIT_CANCELLED, EXIT_INTERRUPTED = 1, 2, 3, 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pruner", description="Client of the pruning service.")
    p.add_argument("--url", help="API base URL (default: PRUNER_URL, else http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="sent as a Bearer token (default: PRUNER_API_KEY)")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="upload a model and a spec")
    submit.add_argument("model", type=Path, help="TorchScript, state_dict or safetensors file")
    submit.add_argument("--spec", help="the spec: a JSON file, '-' for stdin, or inline JSON")
    submit.add_argument("--arch", help="architecture of a state_dict/safetensors upload")
    submit.add_argument("--idempotency-key", help="default: a fresh one (retries reuse it)")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job, then download its model and report")
    submit.add_argument("-o", "--output", type=Path, default=Path("."),
                        help="where --wait saves the model and report (default: .)")
    submit.add_argument("--json", action="store_true", help="print the job as JSON")

    for name, text in (("status", "show a job"), ("watch", "follow a job until it ends"),
                       ("cancel", "cancel a job"), ("report", "print a job's report JSON")):
        command = commands.add_parser(name, help=text)
        command.add_argument("job")
        if name == "status":
            command.add_argument("--json", action="store_true", help="the job as JSON")

    listing = commands.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--status", choices=[s.value for s in JobStatus])
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    listing.add_argument("--json", action="store_true", help="one job JSON per line")

    dataset = commands.add_parser("dataset", help="upload, list, show or delete datasets")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True,
                                              metavar="ACTION")
    upload = dataset_commands.add_parser("upload", help="upload a safetensors or .npz file")
    upload.add_argument("file", type=Path)
    upload.add_argument("--idempotency-key", help="default: a fresh one (retries reuse it)")
    upload.add_argument("--json", action="store_true", help="print the dataset as JSON")
    dataset_commands.add_parser("list", help="list your datasets, newest first")
    for name, text in (("show", "show a dataset as JSON"), ("delete", "delete a dataset")):
        dataset_commands.add_parser(name, help=text).add_argument("dataset")

    download = commands.add_parser("download", help="save a job's model and report")
    download.add_argument("job")
    download.add_argument("-o", "--output", type=Path, default=Path("."))
    download.add_argument("--format", choices=[f.value for f in ModelFormat])

    decode = commands.add_parser("decode", help="a compressed download as safetensors "
                                 "(NumPy only, no API call)")
    decode.add_argument("file", type=Path, help="a .prz file (download --format compressed)")
    decode.add_argument("-o", "--output", type=Path,
                        help="the safetensors file to write (default: FILE.safetensors)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with PrunerClient(args.url, args.api_key) as client:
            code: int = COMMANDS[args.command](client, args)
            return code
    except ApiError as exc:
        print(f"pruner: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except httpx.HTTPError as exc:
        print(f"pruner: cannot reach the API: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as exc:  # an unreadable model or spec file, bad JSON
        print(f"pruner: {exc}", file=sys.stderr)
        return EXIT_ERROR


def read_spec(value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    if value == "-":
        text = sys.stdin.read()
    elif value.lstrip().startswith("{"):
        text = value
    else:
        text = Path(value).read_text()
    spec = json.loads(text)
    if not isinstance(spec, dict):
        raise ValueError("the spec must be a JSON object")
    return spec


def cmd_submit(client: PrunerClient, args: argparse.Namespace) -> int:
    job = client.submit(args.model, read_spec(args.spec), architecture=args.arch,
                        idempotency_key=args.idempotency_key)
    if not args.wait:
        print(job.model_dump_json() if args.json else job.id)
        return 0
    print(f"submitted job {job.id}", file=sys.stderr)
    code = follow(client, job.id)
    if code == 0:
        model, report = client.download(job.id, args.output)
        print(model)
        print(report)
    return code


def follow(client: PrunerClient, job_id: str) -> int:
    """Show the job's progress until it ends; the exit status its end means."""
    view = ProgressView(sys.stderr)
    try:
        client.wait(job_id, on_update=view.update)
    except JobFailed as exc:
        print(f"pruner: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except JobCancelled as exc:
        print(f"pruner: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print(f"\npruner: stopped following job {job_id}; it goes on "
              f"(pruner cancel {job_id} stops it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def cmd_status(client: PrunerClient, args: argparse.Namespace) -> int:
    job = client.get(args.job)
    print(job.model_dump_json(indent=2) if args.json else summary(job))
    return 0


def summary(job: JobPublic) -> str:
    lines = [f"job       {job.id}", f"status    {describe(job)}",
             f"created   {job.created_at:%Y-%m-%d %H:%M:%S}", f"attempts  {job.attempts}"]
    if job.model is not None:
        lines.append(f"model     {job.model.format} sha256 {job.model.sha256}")
    return "\n".join(lines)


def cmd_list(client: PrunerClient, args: argparse.Namespace) -> int:
    for n, job in enumerate(client.list(args.status, limit=min(args.limit, 200))):
        if n >= args.limit:
            break
        if args.json:
            print(job.model_dump_json())
        else:
            print(f"{job.id}  {job.created_at:%Y-%m-%d %H:%M:%S}  {describe(job)}")
    return 0


def cmd_watch(client: PrunerClient, args: argparse.Namespace) -> int:
    return follow(client, args.job)


def cmd_cancel(client: PrunerClient, args: argparse.Namespace) -> int:
    job = client.cancel(args.job)
    print(f"{job.id}: {describe(job)}")
    return 0


def cmd_report(client: PrunerClient, args: argparse.Namespace) -> int:
    print(json.dumps(client.report_json(args.job), indent=2))
    return 0


def cmd_download(client: PrunerClient, args: argparse.Namespace) -> int:
    model = client.download_model(args.job, args.output, args.format)
    report = client.download_report(args.job, args.output)
    print(model)
    print(report)
    return 0


def cmd_decode(client: PrunerClient, args: argparse.Namespace) -> int:
    from core.uploads import UploadRejected

    try:
        print(client.decode(args.file, args.output))
    except UploadRejected as exc:
        print(f"pruner: {args.file}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def cmd_dataset(client: PrunerClient, args: argparse.Namespace) -> int:
    if args.dataset_command == "upload":
        made = client.upload_dataset(args.file, idempotency_key=args.idempotency_key)
        print(made.model_dump_json() if args.json else made.id)
    elif args.dataset_command == "list":
        for d in client.list_datasets():
            shape = "x".join(str(s) for s in d.shape)
            print(f"{d.id}  {d.created_at:%Y-%m-%d %H:%M:%S}  {d.samples} x {shape}  "
                  f"{d.classes} classes  {d.filename or ''}")
    elif args.dataset_command == "show":
        print(client.get_dataset(args.dataset).model_dump_json(indent=2))
    else:
        client.delete_dataset(args.dataset)
        print(f"{args.dataset}: deleted")
    return 0


COMMANDS: dict[str, Callable[[PrunerClient, argparse.Namespace], int]] = {
    "submit": cmd_submit, "status": cmd_status, "list": cmd_list, "watch": cmd_watch,
    "cancel": cmd_cancel, "report": cmd_report, "download": cmd_download,
    "decode": cmd_decode,
    "dataset": cmd_dataset,
}
