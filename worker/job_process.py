"""The job process: ``python -m worker.job_process <job id> <attempt>``, or ``--standby``.

Started fresh for every job by the worker's supervisor (worker/supervisor.py), inside the
sandbox limits, in a scratch directory. A ``--standby`` process is started ahead of the next
job: it imports torch, torchvision and the engine and reads MNIST into CPU memory while the
worker is idle, then waits for one line on stdin, ``<job id> <attempt> <scratch dir>``, and
runs that one job; it never runs a second. A standby that was never assigned a job exits when
stdin closes.

It is the only process that opens the upload and the only one that imports torch, so GPU
memory and any state a hostile or broken model leaves behind die with it.

It writes its own outcome into the job record:
- success: every output file and report.json go to the blob store, then running -> succeeded;
- ``EngineError``: running -> failed with the error's code (exit ``EXIT_FAILED``);
- ``Cancelled``: running -> cancelled, no model offered;
- anything else: running -> failed ``internal_error`` (or ``resource_limit`` on MemoryError).
- a job store unreachable for a whole lease: nothing written (exit ``EXIT_STORE_DOWN``);
  the supervisor settles the attempt as a crash.
Exit code 0 means "the record holds my terminal status". When the process dies without
writing one (killed by a signal), the supervisor settles it (core/jobs/lifecycle.py).

Fencing: every write goes through its ``Claim`` (core/jobs/lifecycle.py), which checks that the
record is still ``running`` with this process's attempt number. A process whose claim was
taken away (its job re-queued after a lost lease) writes nothing and exits ``EXIT_LOST``.

A short outage of the stores (a PostgreSQL restart, an S3 hiccup) does not cost an attempt:
the steps that decide the job's fate (reading its record, fetching its dataset, storing the
outputs, writing the outcome) are retried for up to the job's lease
(``core/storage/outages.py``); progress writes and cancel polls just skip a beat.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from core.jobs.error_codes import JobErrorCode
from core.jobs.lifecycle import Claim
from core.jobs.record import JobError, JobRecord, JobStatus
from core.jobs.report import Progress
from core.settings import Settings, get_settings
from core.storage.backends import open_blob_store, open_job_store
from core.storage.outages import patiently
from core.storage.protocols import REPORT, UPLOAD, BlobStore, StoreUnavailable, model_file
from worker.dataset_files import DatasetGone, dataset_file
from worker.sandbox import is_resource_limit_error

EXIT_OK = 0
EXIT_FAILED = 2  # the record holds `failed` with the error's code
EXIT_LOST = 3  # the claim was lost (or the job is gone): nothing written
EXIT_ORPHANED = 4  # the supervising worker died
EXIT_STORE_DOWN = 5  # the job store stayed unavailable for a lease: nothing written

STANDBY_READY = "standby: warmed up in"  # logged once the standby is ready (benchmarks wait)
PROGRESS_INTERVAL_S = 0.5  # throttle of progress writes (phase and epoch changes always go)
CANCEL_POLL_S = 0.2

log = logging.getLogger("worker.job_process")


class ProgressWriter:
    """``on_progress`` for the engine: writes into the record at most every 0.5 s, and at
    once on every phase or epoch change (so a watcher never misses an epoch)."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.last: Progress | None = None
        self.last_write = 0.0

    def __call__(self, progress: Progress) -> None:
        moved = self.last is None or (progress.phase, progress.epoch) != (
            self.last.phase, self.last.epoch
        )
        if not moved and time.monotonic() - self.last_write < PROGRESS_INTERVAL_S:
            return
        self.last = progress
        self.last_write = time.monotonic()
        try:
            self.claim.store.update(self.claim.job_id, progress=progress)
        except Exception:  # progress is best effort; the job goes on
            log.exception("could not write progress of job %s", self.claim.job_id)


class CancelWatcher(threading.Thread):
    """Polls the record every 0.2 s; sets ``cancelled`` when a cancel was requested or the
    claim was lost (both stop the engine at its next batch), and exits the process when the
    supervising worker is gone (a backstop for PR_SET_PDEATHSIG)."""

    def __init__(self, claim: Claim, parent_pid: int) -> None:
        super().__init__(name="cancel-watcher", daemon=True)
        self.claim = claim
        self.parent_pid = parent_pid
        self.cancelled = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self.cancelled.is_set():
            if os.getppid() != self.parent_pid:
                os._exit(EXIT_ORPHANED)
            try:
                record = self.claim.store.get(self.claim.job_id)
            except Exception:
                record = None  # a busy database: try again next tick
            else:
                if not self.claim.holds(record):
                    self.lost.set()
                    self.cancelled.set()
                elif record is not None and record.cancel_requested:
                    self.cancelled.set()
            time.sleep(CANCEL_POLL_S)


def store_outputs(blobs: BlobStore, job_id: str, result: Any) -> tuple[str, str, int]:
    """Put every output format and the report in the blob store; return the primary format,
    the sha256 of its file (the report's, computed while it was saved) and the bytes stored
    (the tenant's storage quota counts them)."""
    stored = 0
    for fmt, path in result.outputs.items():
        blobs.put_file(job_id, model_file(str(fmt)), Path(path))
        stored += Path(path).stat().st_size
    report = result.report.model_dump_json(indent=2).encode()
    with blobs.writer(job_id, REPORT) as f:
        f.write(report)
    primary = str(result.primary)
    return primary, str(result.report.output.sha256), stored + len(report)


def run(job_id: str, attempt: int, settings: Settings, parent_pid: int) -> int:
    store = open_job_store(settings)
    blobs = open_blob_store(settings)
    claim = Claim(store, job_id, attempt)
    record = patiently(lambda: store.get(job_id), within_s=settings.job_lease_s,
                       what=f"job {job_id}: reading its record")
    if record is None or not claim.holds(record):
        log.warning("job %s attempt %d: not running under this attempt; exiting", job_id, attempt)
        return EXIT_LOST
    watcher = CancelWatcher(claim, parent_pid)
    watcher.start()
    output_dir = Path.cwd() / "out"
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run(job_id, record, claim, watcher, blobs, output_dir, settings)
    finally:
        blobs.drop_local_copies(job_id)  # a remote store's scratch copies: input and outputs


def _run(job_id: str, record: JobRecord, claim: Claim, watcher: CancelWatcher,
         blobs: BlobStore, output_dir: Path, settings: Settings) -> int:
    # Imported here: torch loads only in this process, never in the Celery worker.
    from worker.engine.datasets import UploadedDataset
    from worker.engine.errors import Cancelled, EngineError
    from worker.engine.pipeline import run_job

    try:
        found = patiently(lambda: dataset_file(claim.store, blobs, record, settings),
                          within_s=settings.job_lease_s, what=f"job {job_id}: its dataset")
    except DatasetGone as exc:
        return fail(claim, settings, JobErrorCode.DATASET_UNAVAILABLE, str(exc))
    upload = patiently(lambda: blobs.local_path(job_id, UPLOAD), within_s=settings.job_lease_s,
                       what=f"job {job_id}: fetching its upload")
    try:
        result = run_job(
            upload, record.spec, output_dir, settings=settings,
            on_progress=ProgressWriter(claim), should_cancel=watcher.cancelled.is_set,
            dataset=UploadedDataset(*found) if found is not None else None,
        )
    except Cancelled:
        if watcher.lost.is_set():
            return EXIT_LOST
        finish(claim, settings, JobStatus.CANCELLED, progress=None)
        return EXIT_OK
    except EngineError as exc:
        if exc.report is not None:  # e.g. target_unreachable: the frontier, and no model
            with blobs.writer(job_id, REPORT) as f:
                f.write(json.dumps(exc.report, indent=2).encode())
        return fail(claim, settings, exc.code, exc.message)
    if watcher.lost.is_set():  # re-queued meanwhile: the new attempt writes the files
        return EXIT_LOST
    primary, sha, stored = patiently(lambda: store_outputs(blobs, job_id, result),
                                     within_s=settings.job_lease_s,
                                     what=f"job {job_id}: storing its outputs")
    done = finish(
        claim, settings, JobStatus.SUCCEEDED, model_format=primary, model_sha256=sha,
        output_bytes=stored, progress=Progress(phase="done"),
    )
    return EXIT_OK if done else EXIT_LOST


def finish(claim: Claim, settings: Settings, to: JobStatus, **fields: Any) -> bool:
    """``claim.finish``, riding out a short store outage (a compare-and-set: a retry after
    a commit whose answer was lost finds the job no longer running and returns False)."""
    return patiently(lambda: claim.finish(to, **fields), within_s=settings.job_lease_s,
                     what=f"job {claim.job_id}: writing its outcome ({to.value})")


def fail(claim: Claim, settings: Settings, code: JobErrorCode, message: str) -> int:
    done = finish(claim, settings, JobStatus.FAILED,
                  error=JobError(code=code, message=message))
    return EXIT_FAILED if done else EXIT_LOST


def main(argv: list[str]) -> int:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s job-process %(message)s")
    parent_pid = os.getppid()
    if argv[1:] == ["--standby"]:
        started = time.monotonic()
        warm_up(settings)
        log.info("%s %.1f s; waiting for a job", STANDBY_READY, time.monotonic() - started)
        assignment = sys.stdin.readline().split()  # "<job id> <attempt> <scratch dir>"
        if len(assignment) != 3:
            return EXIT_OK  # the worker went away or stopped: no job for this process
        job_id, attempt, scratch = assignment
        os.chdir(scratch)
    elif len(argv) == 3 and argv[2].isdigit():
        job_id, attempt = argv[1], argv[2]
    else:
        print("usage: python -m worker.job_process <job id> <attempt> | --standby",
              file=sys.stderr)
        return 64
    try:
        return run(job_id, int(attempt), settings, parent_pid)
    except StoreUnavailable:  # down for a whole lease already: no outcome can be written
        log.exception("job %s attempt %s: the store stayed unavailable; the supervisor "
                      "settles this attempt", job_id, attempt)
        return EXIT_STORE_DOWN
    except Exception as exc:  # a bug on our side: say what, keep the trace in the log
        traceback.print_exc()
        claim = Claim(open_job_store(settings), job_id, int(attempt))
        return fail(claim, settings, *classify_exception(exc, settings))


def warm_up(settings: Settings) -> None:
    """What every job pays before its work starts, paid while the worker waits for a job:
    Python's start, importing torch, torchvision and the engine, and reading MNIST into CPU
    memory, normalised for the default input spec, whatever the worker's device (a GPU job
    then only copies the tensors to its device). No upload is opened and CUDA is not
    initialised here."""
    from core.jobs.spec import InputSpec
    from worker.engine import measure, pipeline  # noqa: F401  (the import is the warm-up)
    from worker.engine.data import preload

    measure.warm_up()  # the FLOP counter's first dispatch mode imports torch._dynamo
    try:
        preload(settings.mnist_root, InputSpec(), download=False)
    except Exception:  # e.g. MNIST missing: the job itself reports it with its code
        log.warning("standby: could not preload MNIST", exc_info=True)


def classify_exception(exc: BaseException, settings: Settings) -> tuple[JobErrorCode, str]:
    if is_resource_limit_error(exc):  # out of memory (RLIMIT_DATA), or a write past RLIMIT_FSIZE
        limit = settings.job_memory_limit_bytes
        return JobErrorCode.RESOURCE_LIMIT, (
            f"the job hit its resource limits (memory limit {limit} bytes): {exc}"
        )
    return JobErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
